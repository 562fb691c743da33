"""Resume is exact: N steps straight == a run SIGKILLed after a checkpoint, then resumed."""
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, proc_env, read_metrics, sfr_ds

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


def test_kill_and_resume_matches_straight_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    sfr_ds("train", TINY, *ARGS, "--output-dir", straight, "--nproc-per-node", 2)

    cmd = [sys.executable, "-m", "sfr_ds.cli", "train", str(TINY), *ARGS, "--output-dir", str(killed),
           "--nproc-per-node", "2"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=proc_env(), start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
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

    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(killed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # same sampler order and the same numbers, step by step
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(straight)) == strip(read_metrics(killed))
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, 13))


def test_fresh_run_refuses_existing_checkpoints(tmp_path):
    sfr_ds("train", TINY, "optim.max_steps=2", "run.save_every=1", "--output-dir", tmp_path)
    p = subprocess.run([sys.executable, "-m", "sfr_ds.cli", "train", str(TINY), "optim.max_steps=2",
                        "--output-dir", str(tmp_path)], capture_output=True, text=True, env=proc_env(), cwd=ROOT)
    assert p.returncode != 0 and "--resume" in p.stderr
    # resuming with a different config is refused, naming the field
    p = subprocess.run([sys.executable, "-m", "sfr_ds.cli", "train", str(TINY), "optim.max_steps=2",
                        "optim.lr=0.5", "--output-dir", str(tmp_path), "--resume"],
                       capture_output=True, text=True, env=proc_env(), cwd=ROOT)
    assert p.returncode != 0 and "optim.lr" in p.stderr
