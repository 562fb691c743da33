"""Kill soak (slow, outside the default suite): 20 random interruptions, 20 identical adapters.

    python -m pytest -m slow tests/test_kill_soak.py -s

Each trial starts a 2-rank run, interrupts it at a random point in one of three ways -- SIGKILL of
one rank, SIGTERM of the whole job, or SIGKILL while a checkpoint is being written -- checks that
`latest` names a complete checkpoint, restarts it with --resume (repeatedly, until it finishes)
and compares the final adapter with an uninterrupted run's, bit for bit.
"""

import os
import random
import signal
import time

import pytest
from conftest import read_metrics, sfr_ds
from test_resume import ARGS, assert_same_run, orphans, start

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TRIALS = int(os.environ.get("SFR_DS_SOAK_TRIALS", "20"))


def _ranks(run_dir) -> list[int]:
    return [
        pid for pid in orphans(run_dir) if b"sfr_ds.launch" not in open(f"/proc/{pid}/cmdline", "rb").read()
    ]


def _interrupt(p, run_dir, how: str, rng: random.Random) -> None:
    ckpts = run_dir / "checkpoints"
    if how == "during-save":
        # a checkpoint folder exists but is not complete yet: kill right there
        end = time.time() + 120
        while p.poll() is None and time.time() < end:
            tags = (
                [t for t in ckpts.glob("step-*") if not (t / "complete.json").exists()]
                if ckpts.exists()
                else []
            )
            if tags:
                break
            time.sleep(0.002)
        os.killpg(p.pid, signal.SIGKILL)
        return
    end = time.time() + 120
    while not (run_dir / "metrics.jsonl").exists() and p.poll() is None and time.time() < end:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 2.5))
    if how == "kill-rank":
        ranks = _ranks(run_dir)
        if ranks:
            os.kill(rng.choice(ranks), signal.SIGKILL)
    else:  # "term-job"
        os.killpg(p.pid, signal.SIGTERM)


def _latest_is_complete(run_dir) -> None:
    latest = run_dir / "checkpoints" / "latest"
    if latest.exists():
        tag = latest.read_text().strip()
        assert (run_dir / "checkpoints" / tag / "complete.json").exists(), f"broken latest -> {tag}"


def test_twenty_random_interruptions(tmp_path):
    reference = tmp_path / "reference"
    sfr_ds("train", "configs/tiny.yaml", *ARGS, "--output-dir", reference, "--nproc-per-node", 2)
    rng = random.Random(1234)
    identical = 0
    for trial in range(TRIALS):
        how = ["kill-rank", "term-job", "during-save"][trial % 3]
        run_dir = tmp_path / f"trial{trial:02d}"
        p = start(run_dir)
        _interrupt(p, run_dir, how, rng)
        p.communicate(timeout=240)
        _latest_is_complete(run_dir)
        for _ in range(3):  # resume until done (a resume is itself never interrupted here)
            if (run_dir / "final").exists():
                break
            sfr_ds("train", "--resume", "--output-dir", run_dir, "--nproc-per-node", 2)
        assert_same_run(reference, run_dir)
        identical += 1
        steps = len(read_metrics(run_dir))
        print(f"trial {trial:2d} {how:12s} identical final adapter ({steps} steps logged)")
    print(f"{identical}/{TRIALS} resumed runs ended with the uninterrupted run's adapter")
    assert identical == TRIALS
