"""Throughput of the mining teachers: exact inner-product search (FAISS) and BM25 (bm25s).

Dense: synthetic L2-normalised vectors, timed end to end through ``search`` (index build + search).
BM25: index and search throughput on a BEIR folder (corpus.jsonl, queries.jsonl).

    python benchmarks/mining_search.py [--sizes 5000 50000 500000] [--beir-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

from sfr_ds.mining.bm25 import BM25Scorer
from sfr_ds.mining.search import search

DEFAULT_BEIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_dense(sizes: list[int], dim: int, n_queries: int, k: int, query_chunk: int) -> None:
    rng = np.random.default_rng(0)
    queries = unit_vectors(rng, n_queries, dim)
    device = f"{faiss.get_num_gpus()} GPU(s)" if faiss.get_num_gpus() else "CPU"
    for size in sizes:
        corpus = unit_vectors(rng, size, dim)
        start = time.perf_counter()
        search(queries, corpus, k, query_chunk=query_chunk)
        seconds = time.perf_counter() - start
        print(
            f"exact IP  {device}  corpus {size:>9,} x {dim}  {n_queries} queries  k={k}  "
            f"{seconds:7.2f} s  {n_queries / seconds:10,.0f} queries/s"
        )


def read_jsonl(path: Path, fields: tuple[str, ...]) -> list[str]:
    with path.open() as f:
        return [" ".join(r.get(name, "") for name in fields).strip() for r in map(json.loads, f)]


def bench_bm25(beir_dir: Path, k: int) -> None:
    corpus = read_jsonl(beir_dir / "corpus.jsonl", ("title", "text"))
    queries = read_jsonl(beir_dir / "queries.jsonl", ("text",))
    start = time.perf_counter()
    teacher = BM25Scorer(corpus)
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    teacher.search(queries, k)
    search_s = time.perf_counter() - start
    print(
        f"BM25 {beir_dir.name}: index {len(corpus):,} docs {index_s:.2f} s "
        f"({len(corpus) / index_s:,.0f} docs/s); "
        f"search {len(queries):,} queries k={k} {search_s:.2f} s ({len(queries) / search_s:,.0f} queries/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 50_000, 500_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--query-chunk", type=int, default=4096)
    parser.add_argument("--beir-dir", type=Path, default=DEFAULT_BEIR.resolve())
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)"
    )
    bench_dense(args.sizes, args.dim, args.queries, args.k, args.query_chunk)
    bench_bm25(args.beir_dir, args.k)


if __name__ == "__main__":
    main()
