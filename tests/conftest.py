"""Shared test setup: offline, CPU DeepSpeed, and helpers that start real processes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks' probes (host_reads) and scripts


def join_gloo(rank: int, world: int, port: int, timeout_s: int = 120):
    """In a spawned test process: become rank ``rank`` of ``world`` on the loopback (sfr_ds.dist)."""
    from sfr_ds import dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    return dist.setup(timeout_s=timeout_s)


def free_port() -> int:
    """A TCP port free on the loopback now (each distributed test gets its own)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run(cmd: list, timeout: int = 300, check: bool = True, env: dict | None = None, **kw):
    """Run a command in the repository root. ``check``: it must succeed (its output is shown in the
    assertion if not); ``check=False`` for a command expected to fail, whose result is returned."""
    p = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or proc_env(),
        cwd=kw.pop("cwd", ROOT),
        **kw,
    )
    if check:
        assert p.returncode == 0, (
            f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}"
        )
    return p


def sfr_ds(
    *args, timeout: int = 300, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``sfr-ds ARGS`` in a fresh process (see ``run``)."""
    return run([sys.executable, "-m", "sfr_ds.cli", *args], timeout=timeout, check=check, env=env)


def rel_diff(a, b) -> float:
    """||a - b|| / ||a|| over tensors, or dicts of tensors taken as one vector."""
    if not isinstance(a, dict):
        a, b = {"": a}, {"": b}
    num = math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a))
    return num / math.sqrt(sum(float(a[k].double().pow(2).sum()) for k in a))


def torchrun_worker(n: int, out: Path, *overrides: str, config: Path = TINY) -> dict:
    """Train under torchrun with N ranks and return {step: {param: full gradient}}."""
    import torch

    from sfr_ds.dist import torchrun

    run(torchrun(n, str(ROOT / "tests" / "train_worker.py"), "grads", str(config), str(out), *overrides))
    return torch.load(out, weights_only=True)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def untimed_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock fields: what two runs of the same steps must share."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "input_wait")} for r in read_metrics(run_dir)]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA
