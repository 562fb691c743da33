"""Resume is exact: N steps straight == a run SIGKILLed after a checkpoint, then resumed."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY, proc_env, read_metrics, sfr_ds, untimed_metrics
from safetensors.torch import load_file

pytestmark = pytest.mark.integration


def orphans(run_dir) -> list[int]:
    """Processes still running whose command line names the run directory."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(run_dir).encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


ARGS = ["optim.max_steps=12", "run.save_every=2", "run.keep_checkpoints=2"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run."""
    out = tmp_path_factory.mktemp("straight")
    sfr_ds("train", TINY, *ARGS, "--output-dir", out, "--nproc-per-node", 2)
    return out


def start(run_dir, *extra):
    cmd = [
        sys.executable,
        "-m",
        "sfr_ds.cli",
        "train",
        str(TINY),
        *ARGS,
        *extra,
        "--output-dir",
        str(run_dir),
        "--nproc-per-node",
        "2",
    ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=proc_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(path, p, seconds=240):
    deadline = time.time() + seconds
    while not path.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)


def assert_same_run(a_dir, b_dir):
    a = load_file(a_dir / "final" / "adapter_model.safetensors")
    b = load_file(b_dir / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # same sampler order and the same numbers, step by step
    assert untimed_metrics(a_dir) == untimed_metrics(b_dir)
    assert [r["step"] for r in read_metrics(b_dir)] == list(range(1, 13))


def test_kill_and_resume_matches_straight_run(tmp_path, straight):
    killed = tmp_path / "killed"

    p = start(killed)
    latest = killed / "checkpoints" / "latest"
    wait_for(latest, p)
    os.killpg(p.pid, signal.SIGKILL)  # the launcher, mid-run: its ranks must die with it
    p.wait()
    time.sleep(1.0)
    assert not orphans(killed), "ranks outlived their killed launcher"
    assert latest.exists(), "the run ended before its first checkpoint"
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    resumed_from = int(latest.read_text().split("-")[1])
    assert resumed_from < 12

    out = sfr_ds("train", "--resume", "--output-dir", killed, "--nproc-per-node", 2)
    assert f"at step {resumed_from}" in out.stdout
    assert_same_run(straight, killed)


def test_sigterm_checkpoints_at_the_next_step_and_resumes_exactly(tmp_path, straight):
    """Preemption: SIGTERM to every rank -> all finish the step, checkpoint together, exit 0."""
    run_dir = tmp_path / "term"
    p = start(run_dir, "run.save_every=1000")  # the only checkpoints: the stop's and the last
    wait_for(run_dir / "metrics.jsonl", p)
    time.sleep(0.3)
    os.killpg(p.pid, signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert "stop requested: checkpoint written at step" in out, out[-3000:]
    tag = (run_dir / "checkpoints" / "latest").read_text()
    stopped_at = int(tag.split("-")[1])
    assert 1 <= stopped_at < 12 and not (run_dir / "final").exists()
    sfr_ds("train", "--resume", "--output-dir", run_dir, "--nproc-per-node", 2)
    assert_same_run(straight, run_dir)


def test_nonfinite_loss_stops_or_skips(tmp_path, straight):
    env = dict(proc_env(), SFR_DS_FAULT_NAN_STEP="3")
    args = ["train", TINY, *ARGS, "--nproc-per-node", "2", "--output-dir"]
    p = sfr_ds(*args, tmp_path / "stop", env=env, check=False)
    dataset = read_metrics(straight)[2]["dataset"]
    assert p.returncode != 0
    assert f"non-finite loss at step 3 (dataset {dataset}" in p.stdout + p.stderr
    assert [r["step"] for r in read_metrics(tmp_path / "stop")] == [1, 2]

    sfr_ds(*args, tmp_path / "skip", "run.on_nonfinite=skip", env=env)
    rows, ref = read_metrics(tmp_path / "skip"), read_metrics(straight)
    assert rows[2]["skipped"] is True and rows[2]["loss"] is None and rows[2]["grad_norm"] is None
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref]  # the schedule still follows the step
    assert rows[1]["loss"] == ref[1]["loss"] and rows[3]["loss"] != ref[3]["loss"]
