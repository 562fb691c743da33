"""Training data at scale: per-rank memory and start-up time, Arrow cache vs. parsing every record.

Synthetic records of the seed's size (a 15-word query, 1 positive and 7 negatives of 180 words,
about 10 kB a record) are written as JSONL, then two "ranks" (two processes started together, as
torchrun starts them) each open the training data as ``TrainingData.load`` does (records, plan,
negatives' draw) and build the texts of a few global batches of 2,048 queries:

- first start: the Arrow conversion (one process converts, the other waits on its lock);
- second start: both memory-map the converted copy;
- the old path (``data.memory_map=false``): every record parsed into every rank (sizes up to
  ``--old-max``: at 1M records it would need ~10 GB per rank).

Memory per rank is private memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup), read
while both ranks are alive and have touched the same pages, so the shared page cache is not counted.
"data" is that minus the same figure right after the imports.

    python benchmarks/data_scale.py                                  # 10k and 100k records
    python benchmarks/data_scale.py --sizes 10000,100000,1000000     # + 1M (~10 GB JSONL, ~10 GB Arrow)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS_Q, WORDS_D, NEG = 15, 180, 7
DATASETS = ("synth_a", "synth_b")


def private_mb() -> dict:
    fields = {}
    with open(f"/proc/{os.getpid()}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1]) / 1024
    return {
        "private": fields["Private_Clean"] + fields["Private_Dirty"],
        "rss": fields["Rss"],
        "pss": fields["Pss"],
    }


def top_private(n: int = 4) -> list:
    """The mappings holding the most private memory (MB), to tell heap from mapped files."""
    per: dict[str, float] = {}
    name = ""
    with open(f"/proc/{os.getpid()}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                name = parts[5] if len(parts) > 5 else "[anon]"
            elif parts and parts[0] in ("Private_Clean:", "Private_Dirty:"):
                per[name] = per.get(name, 0) + int(parts[1]) / 1024
    return sorted(((round(v, 1), k) for k, v in per.items()), reverse=True)[:n]


def generate(path: Path, n: int, seed: int = 0) -> None:
    """n records of the seed's size; texts are drawn passages made unique by the record's number."""
    rng = np.random.default_rng(seed)
    vocab = np.asarray([f"w{i:05d}" for i in range(30000)])
    passages = [" ".join(vocab[rng.integers(len(vocab), size=WORDS_D)]) for _ in range(4096)]
    queries = [" ".join(vocab[rng.integers(len(vocab), size=WORDS_Q)]) for _ in range(4096)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        pick = rng.integers(4096, size=(n, 2 + NEG))
        for i in range(n):
            p = pick[i]
            rec = {
                "query": f"{queries[p[0]]} {i}",
                "pos": [f"{passages[p[1]]} {i}"],
                "neg": [f"{passages[j]} {i}.{k}" for k, j in enumerate(p[2:])],
                "task_type": "retrieval",
                "dataset": DATASETS[i % len(DATASETS)],
                "instruction": "Given a query, retrieve relevant passages",
            }
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)


def rank(args) -> None:
    """One rank: open the data as ``TrainingData.load`` does, build ``--steps`` global batches,
    say "ready", and on the parent's word measure and print the numbers."""
    t0 = time.perf_counter()
    import pyarrow  # noqa: F401 (imported by the Arrow path: part of the base, as torch is)

    from sfr_ds.data.arrow_store import open_training_data
    from sfr_ds.data.batch import NegativeDrawer, build_text_batch
    from sfr_ds.data.load import group_by_dataset, load_training_data
    from sfr_ds.data.sampler import BatchPlan

    t_import = time.perf_counter() - t0
    base = private_mb()["private"]
    t1 = time.perf_counter()
    if args.mode == "arrow":
        records = open_training_data([args.file], None, args.cache)
        converted = any(p.converted_s is not None for p in records.parts)
    else:
        records, converted = load_training_data([args.file]), False
    plan = BatchPlan(group_by_dataset(records), args.batch, homogeneous=True, seed=42)
    drawer = NegativeDrawer(records, NEG, "repeat", 42)
    t_load = time.perf_counter() - t1
    loaded = private_mb()["private"] - base
    t2 = time.perf_counter()
    for step in range(args.steps):
        gb = plan.batch(step)
        batch = build_text_batch(records, gb.indices, gb.epoch, drawer)
        assert len(batch.docs) == args.batch * (1 + NEG)
    t_steps = (time.perf_counter() - t2) / args.steps
    del batch  # what the rank holds between steps (the step's texts are the same on both paths)
    gc.collect()
    print("ready", flush=True)
    sys.stdin.readline()  # both ranks hold their pages now
    mem = dict(private_mb(), top=top_private())
    out = dict(
        mem,
        data=mem["private"] - base,
        loaded=loaded,
        load_s=t_load,
        import_s=t_import,
        step_s=t_steps,
        converted=converted,
    )
    print(json.dumps(out), flush=True)
    sys.stdin.readline()  # stay until the other rank has measured too: our exit would make its pages private


def two_ranks(file: Path, mode: str, cache: Path, batch: int, steps: int) -> list[dict]:
    cmd = [sys.executable, __file__, "--rank", mode, "--file", str(file), "--cache", str(cache)]
    cmd += ["--batch", str(batch), "--steps", str(steps)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for _ in range(2)
    ]
    for p in procs:
        while (line := p.stdout.readline()) and line.strip() != "ready":
            pass
        if not line:
            raise SystemExit(f"a rank failed ({p.wait()})")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.stdin.write("exit\n")
        p.stdin.flush()
        p.wait()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--old-max", type=int, default=100000, help="largest size run on the old path")
    ap.add_argument("--workdir", default="", help="where the JSONL and the cache go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rank", choices=["arrow", "old"], help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank:
        args.mode = args.rank
        return rank(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="data_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in map(int, args.sizes.split(",")):
        file, cache = work / f"records_{n}.jsonl", work / f"cache_{n}"
        t = time.perf_counter()
        if not file.exists():
            generate(file, n)
        gen_s = time.perf_counter() - t
        gb = file.stat().st_size / 1e9
        shutil.rmtree(cache, ignore_errors=True)
        first = two_ranks(file, "arrow", cache, args.batch, args.steps)
        conv = max(r["load_s"] for r in first)
        second = two_ranks(file, "arrow", cache, args.batch, args.steps)
        old = two_ranks(file, "old", cache, args.batch, args.steps) if n <= args.old_max else None
        row = {
            "records": n,
            "jsonl_gb": round(gb, 2),
            "generate_s": round(gen_s, 1),
            "convert_s": round(conv, 1),
            "convert_mb_s": round(gb * 1000 / conv, 1),
            "converters": sum(r["converted"] for r in first),
            "second_start_s": round(max(r["load_s"] for r in second), 2),
            "import_s": round(max(r["import_s"] for r in second), 2),
            "arrow_private_mb": [round(r["private"]) for r in second],
            "arrow_data_mb": [round(r["data"], 1) for r in second],
            "arrow_loaded_mb": [round(r["loaded"], 1) for r in second],
            "arrow_step_s": round(max(r["step_s"] for r in second), 3),
            "old_start_s": round(max(r["load_s"] for r in old), 1) if old else None,
            "old_private_mb": [round(r["private"]) for r in old] if old else None,
            "old_data_mb": [round(r["data"]) for r in old] if old else None,
            "old_loaded_mb": [round(r["loaded"]) for r in old] if old else None,
            "old_step_s": round(max(r["step_s"] for r in old), 3) if old else None,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        if not args.keep:
            file.unlink(missing_ok=True)
            shutil.rmtree(cache, ignore_errors=True)
    print()
    print(table(rows))
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def table(rows: list[dict]) -> str:
    head = (
        "| records | JSONL | first start: conversion | second start | private MB per rank (data) "
        "| step texts | old path: start | old path: private MB per rank (data) | old step texts |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    out = [head]
    for r in rows:
        arrow_mem = " / ".join(f"{m} ({d:+.0f})" for m, d in zip(r["arrow_private_mb"], r["arrow_data_mb"]))
        old_mem = (
            " / ".join(f"{m} ({d:+.0f})" for m, d in zip(r["old_private_mb"], r["old_data_mb"]))
            if r["old_private_mb"]
            else "-"
        )
        out.append(
            f"| {r['records']:,} | {r['jsonl_gb']} GB | {r['convert_s']} s ({r['convert_mb_s']} MB/s) "
            f"| {r['second_start_s']} s | {arrow_mem} | {r['arrow_step_s']} s "
            f"| {r['old_start_s'] if r['old_start_s'] is not None else '-'} s | {old_mem} "
            f"| {r['old_step_s'] if r['old_step_s'] is not None else '-'} s |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
