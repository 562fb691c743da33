"""Throughput, MFU and peak memory of the real training step: the padded baseline vs the packed fast path.

A step is what ``sfr_ds.train`` runs per optimizer step on one rank: GradCache cache pass, InfoNCE
over the gathered documents (``sfr_ds.loss.InfoNCE``, the step gate's collective included),
chunked re-forward and backward through a DeepSpeed ZeRO-2 engine (``sfr_ds.engine``), optimizer
step. The backbone is random, built from a config (nothing downloaded), with LoRA r=8 on every
linear layer; each example is 1 query + 1 positive + ``--hard-negatives`` documents, with token
lengths drawn from the bundled training data (``sfr_ds/resources/data``, queries with their
instruction, <= 128 tokens, documents <= 256) as ``--tokenizer`` splits them, or fixed (``--lengths``).

  baseline  as peers do it: runs of ``--chunk-size`` sequences padded to their longest, gradient
            checkpointing on, the usual attention (flash-attn where installed, else sdpa)
  fast      packed chunks of <= ``--chunk-tokens`` real tokens, longest first, varlen attention,
            no gradient checkpointing (the cache pass stores nothing; one chunk's activations do)
  fast-matryoshka  fast, with the loss also over the first 1/2, 1/4 and 1/8 of the width
            (``loss.matryoshka_dims``): what Matryoshka adds to a step

Tokens/s counts real tokens (no padding). A mode's time is its fastest timed step (the least
disturbed, on a shared machine). MFU = tokens/s x 4N / (ranks x the matrix-multiply rate that this
script measures on one device: bf16 on GPU, the training dtype on CPU), N = the backbone's linear
weights (no embeddings). Peak memory: torch.cuda.max_memory_allocated on GPU, else the peak
resident set size (VmHWM, reset before the timed steps). Each (batch, mode) runs in a fresh process.

The fast mode's rate also gives a projection of the seed's recipe (2,048 queries x 8 documents per
step on 8 x A100) at the same MFU on ``--project-tflops`` per A100 (an assumption, printed with it).

    python benchmarks/train_step.py --shape small --queries 16,64 --threads 1    # CPU, ~12 min
    python benchmarks/train_step.py --shape mistral-7b --queries 256             # one H100/H200
    bash benchmarks/gpu_check.sh                                                 # the GPU checks, one call
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from shapes import MISTRAL_7B, MISTRAL_SMALL, TINY_MISTRAL

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # random_init, default --chunk-tokens, default --chunk-size
    "tiny": (TINY_MISTRAL, 2048, 32),
    "small": (MISTRAL_SMALL, 2048, 32),
    # 4,096 tokens (configs/sfr_mistral_7b.yaml): the activations per token are in docs/benchmarks.md
    "mistral-7b": (MISTRAL_7B, 4096, 32),
}
DATA = ["scifact_train.jsonl", "stsb_train.jsonl", "banking77_train.jsonl"]
QUERY_MAX, DOC_MAX = 128, 256


# ----------------------------------------------------------------------------- inputs


def data_lengths(tokenizer_name: str) -> tuple[list[int], list[int]]:
    """Token counts (EOS included, truncated like training) of the bundled queries and documents."""
    from sfr_ds.config import ModelConfig
    from sfr_ds.data.load import load_records
    from sfr_ds.data.tokens import format_query
    from sfr_ds.model import load_tokenizer

    records = [r for f in DATA for r in load_records(str(ROOT / "sfr_ds/resources/data" / f))]
    tok = load_tokenizer(ModelConfig(name_or_path=tokenizer_name))

    def count(texts: list[str], cap: int) -> list[int]:
        return [min(len(ids) + 1, cap) for ids in tok(texts, add_special_tokens=True)["input_ids"]]

    return (
        count([format_query(r.query, r.instruction) for r in records], QUERY_MAX),
        count([t for r in records for t in r.pos + r.neg], DOC_MAX),
    )


def random_tokens(lengths, vocab: int, rng):
    """Right-padded ``Tokens`` of random ids with the given lengths."""
    import numpy as np
    import torch

    from sfr_ds.data.tokens import Tokens

    lengths = np.asarray(lengths)
    width = int(lengths.max())
    mask = torch.from_numpy(np.arange(width)[None, :] < lengths[:, None]).long()
    ids = torch.from_numpy(rng.integers(4, vocab, size=(len(lengths), width))) * mask
    return Tokens(ids, mask)


def step_batch(args, n: int, rank: int, vocab: int):
    """This rank's queries and documents: n queries, n * (1 + k) documents."""
    import numpy as np

    rng = np.random.default_rng(args.seed + rank)
    if args.lengths:
        q_len, d_len = (int(x) for x in args.lengths.split(","))
        q_lengths, d_lengths = [q_len] * n, [d_len] * (n * (1 + args.hard_negatives))
    else:
        q_pool, d_pool = data_lengths(args.tokenizer)
        q_lengths = rng.choice(q_pool, n)
        d_lengths = rng.choice(d_pool, n * (1 + args.hard_negatives))
    return random_tokens(q_lengths, vocab, rng), random_tokens(d_lengths, vocab, rng)


# ----------------------------------------------------------------------------- one mode, one process


def peak_rss_reset() -> None:
    """Linux: restart the peak-RSS count (VmHWM) from the current RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def linear_weights(model) -> int:
    """N for MFU: the backbone's matrix-multiply weights (embeddings and LoRA left out)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() == 2 and "lora_" not in name and "embed" not in name
    )


def build(args, mode: str, n: int, device):
    """(engine, N, config) for ``mode``: the training code's own model and DeepSpeed setup."""
    import torch

    from sfr_ds.config import TrainConfig
    from sfr_ds.engine.training import initialize
    from sfr_ds.model import build_embedder

    cfg = TrainConfig()
    cfg.model.random_init, cfg.model.dtype = SHAPES[args.shape][0], args.dtype
    cfg.model.gradient_checkpointing = mode == "baseline"
    cfg.gradcache.packing = mode.startswith("fast")
    cfg.deepspeed.config = str(
        ROOT / "ds_configs" / ("zero2_bf16.json" if args.dtype == "bf16" else "zero2.json")
    )
    torch.manual_seed(0)
    with torch.device(device):  # a 7B model is built where it runs: no slow host-side init
        model = build_embedder(cfg.model, cfg.lora, packed=cfg.gradcache.packing)
    return initialize(model, cfg, total_steps=10**6, per_rank_queries=n), linear_weights(model), cfg


def run_mode(args, mode: str, queries: int) -> dict:
    """Warm-up and timed steps of one mode; this rank's numbers, summed/maxed over ranks."""
    import numpy as np
    import torch

    from sfr_ds import dist
    from sfr_ds.engine.training import optimizer_step
    from sfr_ds.forward_backward import ChunkPolicy, gradcache_step
    from sfr_ds.guards import StepGate, StopFlag
    from sfr_ds.loss import InfoNCE

    me = dist.setup()
    n = queries // me.world
    device = torch.device("cuda", me.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    engine, N, cfg = build(args, mode, n, device)
    group = 1 + args.hard_negatives
    queries_t, docs_t = step_batch(args, n, me.rank, SHAPES[args.shape][0]["vocab_size"])
    positive = ((me.rank * n + torch.arange(n)) * group).to(device)
    width = SHAPES[args.shape][0]["hidden_size"]
    dims = [width, width // 2, width // 4, width // 8] if mode == "fast-matryoshka" else []
    loss = InfoNCE(cfg.loss.temperature, dims).by_rows(
        positive, torch.ones(n, queries * group, dtype=torch.bool)
    )
    chunks = ChunkPolicy(args.chunk_size, args.chunk_tokens if mode.startswith("fast") else None)
    q_chunks, d_chunks = chunks.plan(queries_t, docs_t)
    computed = sum(int(np.prod(c.batch.input_ids.shape)) for c in q_chunks + d_chunks)
    real = queries_t.n_tokens + docs_t.n_tokens
    stop = StopFlag()

    if args.sync_debug and device.type == "cuda":  # warn at every host-device synchronisation
        torch.cuda.set_sync_debug_mode("warn")

    def one_step(s: int) -> float:
        t0 = time.perf_counter()
        gate = StepGate(s, real, stop)
        gradcache_step(engine, queries_t, docs_t, loss, chunks=chunks, gather=True, gate=gate)
        optimizer_step(engine)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for s in range(args.warmup):
        one_step(s)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    peak_rss_reset()
    dist.barrier()
    seconds = min(one_step(args.warmup + s) for s in range(args.steps))  # the least disturbed one
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
    reads = None
    if args.host_reads:  # one more step, untimed, under the probe
        from host_reads import HostReads

        with HostReads() as probe:
            one_step(args.warmup + args.steps)
        reads = probe.report()
    rows = dist.all_gather_object(
        {
            "real": real,
            "computed": computed,
            "seconds": seconds,
            "peak": peak,
            "chunks": len(q_chunks) + len(d_chunks),
        }
    )
    dist.cleanup()
    return {
        "mode": mode,
        "queries": queries,
        "N": N,
        "chunks": rows[0]["chunks"],
        "real_tokens": sum(r["real"] for r in rows),
        "computed_tokens": sum(r["computed"] for r in rows),
        "seconds": max(r["seconds"] for r in rows),
        "peak_bytes": max(r["peak"] for r in rows),
        "host_reads": reads,
    }


# ----------------------------------------------------------------------------- driver


def matmul_rate(dtype: str) -> tuple[float, str]:
    """FLOP/s of a large square matrix product in ``dtype`` on this machine's device, and its name."""
    import torch

    cuda = torch.cuda.is_available()
    size, reps = (8192, 10) if cuda else (2048, 3)
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = (torch.randn(size, size, dtype=kind, device="cuda" if cuda else "cpu") for _ in range(2))
    for _ in range(2):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    rate = 2 * size**3 * reps / (time.perf_counter() - t0)
    return rate, (torch.cuda.get_device_name() if cuda else cpu_name())


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"CPU, {os.cpu_count()} cores"


def launch(args, mode: str, queries: int) -> dict:
    """One (mode, batch) in a fresh process (torchrun for --world > 1): clean peak memory."""
    me = [sys.executable, str(Path(__file__).resolve())] + sys.argv[1:] + ["--worker", f"{mode}:{queries}"]
    if args.world > 1:
        me = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.world}"] + me[1:]
    out = subprocess.run(me, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{mode} @ {queries} queries failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    if args.sync_debug:
        print(
            f"--- {mode} @ {queries}: synchronisations\n"
            + "\n".join(line for line in out.stderr.splitlines() if "synchroniz" in line.lower())
        )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["host_reads"] is not None:
        print(
            f"--- {mode} @ {queries}: host reads of tensor values in one step (rank 0)\n"
            + result["host_reads"]
        )
    return result


def mfu(r: dict, rate: float, world: int) -> float:
    """Model FLOPs utilisation: 4N FLOPs per real token over the measured matrix-multiply rate."""
    return r["real_tokens"] / r["seconds"] * 4 * r["N"] / (rate * world)


def table(results: list[dict], rate: float, device: str, args) -> str:
    first = results[0]["mode"]  # ratios against the first mode of --modes
    base = {r["queries"]: r for r in results if r["mode"] == first}
    smallest = {r["mode"]: r for r in sorted(results, key=lambda r: -r["queries"])}
    lines = [
        f"device: {device}; matmul rate ({args.dtype}): {rate / 1e12:.3f} TFLOP/s; shape {args.shape} "
        f"(N = {results[0]['N'] / 1e6:.1f}M linear weights), world {args.world}, "
        f"{1 + args.hard_negatives} documents per query",
        "| queries | mode | chunks/rank | real tokens | padded share | s/step | tokens/s | MFU | peak memory "
        f"| tokens/s vs {first} | peak vs smallest batch |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        tps = r["real_tokens"] / r["seconds"]
        b = base.get(r["queries"])
        speed = f"{tps / (b['real_tokens'] / b['seconds']):.2f}x" if b else "-"
        growth = f"{r['peak_bytes'] / smallest[r['mode']]['peak_bytes']:.3f}x"
        lines.append(
            f"| {r['queries']} | {r['mode']} | {r['chunks']} | {r['real_tokens']:,} "
            f"| {1 - r['real_tokens'] / r['computed_tokens']:.0%} | {r['seconds']:.2f} | {tps:,.0f} "
            f"| {mfu(r, rate, args.world):.1%} | {r['peak_bytes'] / 2**30:.2f} GiB | {speed} | {growth} |"
        )
    return "\n".join(lines)


SEED_QUERIES, SEED_GPUS, SEED_HOURS = 2048, 8, 15  # the seed: batch 2,048, ~15 h on 8 A100s


def projection(results: list[dict], rate: float, args) -> str:
    """The seed's step on 8 A100s at the fast mode's measured MFU (ranks scale linearly: the
    cross-rank gather, one all-gather of 2,048 x 8 embeddings per step, is left out)."""
    fast = [r for r in results if r["mode"] == "fast"]
    if not fast:
        return ""
    r = max(fast, key=lambda r: r["queries"])
    util = mfu(r, rate, args.world)
    tokens_per_query = r["real_tokens"] / r["queries"]
    gpu_tps = util * args.project_tflops * 1e12 / (4 * r["N"])
    step_s = SEED_QUERIES * tokens_per_query / (SEED_GPUS * gpu_tps)
    steps = SEED_HOURS * 3600 / step_s
    return (
        f"projection (fast, {r['queries']} queries): at {util:.1%} MFU on {SEED_GPUS} A100s of "
        f"{args.project_tflops:g} TFLOP/s bf16 each (assumed), {tokens_per_query:.0f} real tokens per "
        f"query with its {1 + args.hard_negatives} documents: {SEED_GPUS * gpu_tps:,.0f} tokens/s, "
        f"{step_s:.1f} s per {SEED_QUERIES:,}-query step, {steps:,.0f} steps "
        f"({steps * SEED_QUERIES / 1e6:.2f} M queries) in the seed's {SEED_HOURS} hours"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="small")
    p.add_argument("--queries", default="16,64", help="global queries per step, comma-separated")
    p.add_argument("--hard-negatives", type=int, default=7, help="documents per query = 1 + this (seed: 7)")
    p.add_argument("--chunk-tokens", type=int, help="fast: real tokens per chunk (default: per shape)")
    p.add_argument("--chunk-size", type=int, help="baseline: sequences per chunk (default: per shape)")
    p.add_argument("--modes", default="baseline,fast")
    p.add_argument("--world", type=int, default=1, help="ranks (torchrun); queries are split among them")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--tokenizer", default="builtin:tiny-tokenizer", help="splits the bundled data for lengths"
    )
    p.add_argument("--lengths", help="fixed 'QUERY,DOC' token lengths instead of the data's")
    p.add_argument("--steps", type=int, default=2, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--sync-debug", action="store_true", help="GPU: list the step's host synchronisations")
    p.add_argument(
        "--host-reads",
        action="store_true",
        help="list where one extra (untimed) step reads tensor values into Python (any device)",
    )
    p.add_argument(
        "--project-tflops",
        type=float,
        default=250.0,
        help="bf16 matrix-multiply rate of one A100 for the projection (TFLOP/s; default: 80%% of "
        "its 312 peak, the share of peak a large bf16 product reaches on an H200)",
    )
    p.add_argument("--json", help="also write the results (rows, rate, device, arguments) to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    args.dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    _, default_tokens, default_size = SHAPES[args.shape]
    args.chunk_tokens = args.chunk_tokens or default_tokens
    args.chunk_size = args.chunk_size or default_size
    if args.worker:
        mode, queries = args.worker.split(":")
        result = run_mode(args, mode, int(queries))
        if int(os.environ.get("RANK", 0)) == 0:
            print(json.dumps(result), flush=True)
        return
    rate, device = matmul_rate(args.dtype)
    results = []
    for q in args.queries.split(","):
        for mode in args.modes.split(","):
            results.append(launch(args, mode, int(q)))
            print(
                f"# {mode} @ {q} queries: {json.dumps(results[-1])}", flush=True
            )  # kept if a later one dies
    print(table(results, rate, device, args))
    print(projection(results, rate, args))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"device": device, "matmul_flops": rate, "args": vars(args), "results": results}, indent=1
            )
        )


if __name__ == "__main__":
    main()
