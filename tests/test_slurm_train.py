"""slurm/train_8xa100.sh against a real local Slurm: completion, preemption, requeue, a dead rank.

The script is submitted unmodified except for resource overrides on the sbatch command line (the
fake node advertises 8 GPUs; here each job runs 2 CPU ranks). Skipped where Slurm is not installed.
"""

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, proc_env, read_metrics, untimed_metrics
from safetensors.torch import load_file
from slurm_cluster import cluster_fixture

pytestmark = [pytest.mark.integration, pytest.mark.slurm]
cluster = cluster_fixture(partitions=("gpu", "debug"))
ARGS = ["optim.max_steps=12", "run.save_every=2"]
SHRINK = ["--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=2G", "--time=20"]


def submit(cluster, run_dir: Path, *extra_args: str) -> str:
    env = cluster.env(proc_env())
    env.update(SFR_DS_PYTHON=sys.executable, SFR_DS_HOME=str(ROOT))
    import subprocess

    p = subprocess.run(
        [
            "sbatch",
            "--parsable",
            *SHRINK,
            f"--output={run_dir}.log",
            str(ROOT / "slurm" / "train_8xa100.sh"),
            str(TINY),
            "--output-dir",
            str(run_dir),
            *ARGS,
            *extra_args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def wait_until(cond, what: str, timeout: float = 300, cluster=None):
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.logs() if cluster else ''}")
        time.sleep(0.1)


def job_state(cluster, job: str) -> str:
    """State from the job-completion log (no accounting here), or RUNNING/PENDING from squeue."""
    q = cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()
    if q:
        return q
    comp = cluster.root / "log" / "jobcomp.txt"
    states = re.findall(rf"JobId={job} .*?JobState=(\S+)", comp.read_text()) if comp.exists() else []
    return states[-1] if states else "UNKNOWN"


def finished(cluster, job: str) -> bool:
    return job_state(cluster, job) not in ("RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "REQUEUED")


def adapter(run_dir: Path) -> dict:
    return load_file(run_dir / "final" / "adapter_model.safetensors")


def same(a: Path, b: Path) -> None:
    x, y = adapter(a), adapter(b)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert untimed_metrics(a) == untimed_metrics(b)


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("slurm") / "straight"
    job = submit(cluster, run_dir)
    wait_until(lambda: finished(cluster, job), "the job", cluster=cluster)
    log = Path(f"{run_dir}.log").read_text()
    assert job_state(cluster, job) == "COMPLETED", log[-3000:]
    assert "global batch 8 queries = 4 per rank x 2 ranks" in log
    return run_dir


def test_train_script_completes(uninterrupted):
    assert [r["step"] for r in read_metrics(uninterrupted)] == list(range(1, 13))


def test_pre_timeout_signal_checkpoints_requeues_and_resumes_exactly(cluster, uninterrupted, tmp_path):
    run_dir = tmp_path / "usr1"
    job = submit(cluster, run_dir)
    wait_until(lambda: (run_dir / "checkpoints" / "latest").exists(), "a first checkpoint", cluster=cluster)
    # what --signal=B:USR1@300 delivers before the time limit
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    wait_until(
        lambda: finished(cluster, job) and (run_dir / "final").exists(),
        "requeue and completion",
        cluster=cluster,
    )
    log = Path(f"{run_dir}.log").read_text()
    assert "USR1: asking every rank to checkpoint and stop" in log and "requeueing job" in log
    assert "restart 1" in log and "resumed from" in log
    same(uninterrupted, run_dir)


@pytest.mark.slow  # the same requeue-and-resume path as the USR1 test above, started by scontrol
def test_external_requeue_resumes_exactly(cluster, uninterrupted, tmp_path):
    run_dir = tmp_path / "requeue"
    job = submit(cluster, run_dir)
    wait_until(lambda: (run_dir / "checkpoints" / "latest").exists(), "a first checkpoint", cluster=cluster)
    cluster.run("scontrol", "requeue", job)
    wait_until(
        lambda: finished(cluster, job) and (run_dir / "final").exists(),
        "requeue and completion",
        cluster=cluster,
    )
    assert "restart 1" in Path(f"{run_dir}.log").read_text()
    same(uninterrupted, run_dir)


def test_a_killed_rank_fails_the_job_quickly(cluster, tmp_path):
    run_dir = tmp_path / "dead"
    job = submit(cluster, run_dir, "optim.max_steps=100000", "run.save_every=100000")
    wait_until(lambda: (run_dir / "metrics.jsonl").exists(), "training steps", cluster=cluster)
    ranks = [
        pid
        for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if _cmdline(pid).startswith(sys.executable) and str(run_dir) in _cmdline(pid)
    ]
    assert len(ranks) == 2, ranks
    killed_at = time.time()
    os.kill(ranks[1], signal.SIGKILL)
    wait_until(lambda: finished(cluster, job), "the job to end", timeout=120, cluster=cluster)
    took = time.time() - killed_at
    print(f"job ended {took:.1f} s after a rank was killed")
    assert job_state(cluster, job) in ("FAILED", "CANCELLED", "NODE_FAIL")
    assert took < 60


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""
