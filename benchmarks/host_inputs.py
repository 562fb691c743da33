"""Host-side inputs of one training step: what the prefetch thread takes off the device's critical path.

Per step, for one rank's share of the seed's batch (256 queries x 8 documents of a 2,048-query global
batch): building the global batch's texts and negatives, tokenizing the rank's 2,304 texts and its
candidate mask over 16,384 gathered documents (``TrainingData.maker``, what the loop runs).
Then how much Python work a launching thread still gets done while those inputs are made on the
prefetch thread (the tokenizer's Rust code releases the GIL): 100% means the overlap costs nothing.

Texts are the bundled SciFact training records (claims and abstracts, the longest bundled texts),
repeated with numbered queries to fill the global batch.

    python benchmarks/host_inputs.py [--ranks 8] [--global-batch 2048] [--tokenizer builtin:smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sfr_ds.config import load_config
from sfr_ds.data.batch import NegativeDrawer
from sfr_ds.data.load import group_by_dataset, load_training_data
from sfr_ds.data.sampler import BatchPlan
from sfr_ds.data.step_inputs import TrainingData
from sfr_ds.model import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT / "sfr_ds" / "resources" / "data" / "scifact_train.jsonl"


def repeated_records(n: int, out: Path) -> None:
    base = [json.loads(line) for line in SCIFACT.read_text().splitlines()]
    with open(out, "w") as f:
        for i in range(n):
            r = dict(base[i % len(base)])
            r["query"] = f"{r['query']} ({i})"
            f.write(json.dumps(r) + "\n")


def spin(seconds: float) -> int:
    """Iterations of a Python loop in ``seconds``: a stand-in for the thread launching kernels."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n


def progress_beside(make: Callable[[int], object], seconds: float) -> float:
    """The loop's rate while ``make`` runs over and over on another thread, over its rate alone."""
    alone = spin(seconds)
    stop = threading.Event()

    def work():
        step = 0
        while not stop.is_set():
            make(step)
            step += 1

    worker = threading.Thread(target=work)
    worker.start()
    beside = spin(seconds)
    stop.set()
    worker.join()
    return beside / alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "sfr_mistral_7b.yaml"))
    parser.add_argument(
        "--tokenizer",
        default="builtin:smollm2-135m",
        help="the recipe's Mistral tokenizer needs the hub; SmolLM2's is a BPE of similar size",
    )
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "records.jsonl"
        repeated_records(args.global_batch * 2, data)
        cfg = load_config(
            args.config,
            [
                f"model.tokenizer={args.tokenizer}",
                f"data.train_files=[{data}]",
                f"data.global_batch_size={args.global_batch}",
            ],
        )
        records = load_training_data(cfg.data.train_files)
    plan = BatchPlan(
        group_by_dataset(records), cfg.data.global_batch_size, homogeneous=True, seed=cfg.data.seed
    )
    drawer = NegativeDrawer(records, cfg.data.hard_negatives, cfg.data.short_negatives, cfg.data.seed)
    per_rank = args.global_batch // args.ranks
    data = TrainingData(records, plan, drawer, plan.steps_per_epoch)
    make = data.maker(slice(0, per_rank), load_tokenizer(cfg.model), cfg)
    make(0)  # warm-up: tokenizer caches, first allocation

    times, tokens = [], 0
    for step in range(args.steps):
        start = time.perf_counter()
        _, inputs = make(step)
        times.append(time.perf_counter() - start)
        tokens = inputs.n_tokens
    mean = sum(times) / len(times)

    share = progress_beside(make, args.steps * mean)

    print(
        f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}; tokenizer {args.tokenizer}"
    )
    print(
        f"one rank's share ({per_rank} queries x {1 + cfg.data.hard_negatives} documents of a "
        f"{args.global_batch}-query global batch over {args.ranks} ranks, {tokens:,} real tokens): "
        f"{mean:.3f} s per step (min {min(times):.3f}, max {max(times):.3f}, {args.steps} steps)"
    )
    print(
        f"a Python loop on the launching thread, while the prefetch thread makes steps: {share:.0%} of "
        f"its rate alone ({os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
