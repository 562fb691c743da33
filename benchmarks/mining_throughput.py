"""Mining throughput: teacher corpus encoding (MiniLM on SciFact), BM25, and exact search scaling.

Encoding goes through the mining path itself (``encode_cached``: TextEncoder, shards written
as .npy), into a fresh temporary cache, so the figure is what ``sfr-ds mine`` pays per document.
BM25 and the synthetic 5k/50k/500k exact-search figures come from ``mining_search.py``.

    python benchmarks/mining_throughput.py [--docs 1024] [--doc-max-len 256] [--sizes ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import torch
from mining_search import DEFAULT_BEIR, bench_bm25, bench_dense

from sfr_ds.data.prepare import load_beir_corpus
from sfr_ds.mining.encode_cache import encode_cached
from sfr_ds.mining.teachers import CacheOptions, EncodeOptions, make_teacher


def bench_encode(beir_dir: Path, n_docs: int, max_len: int, batch_size: int, shard_size: int) -> None:
    """Documents per second for the first ``n_docs`` SciFact documents (model load excluded).

    Wall time suffers from other processes on a shared machine; CPU time (all threads of this
    process) does not, so both are printed."""
    docs = list(load_beir_corpus(beir_dir / "corpus.jsonl").values())[:n_docs]
    with tempfile.TemporaryDirectory() as root:
        teacher = make_teacher(
            "builtin:minilm",
            EncodeOptions("mean", doc_max_len=max_len, batch_size=batch_size),
            CacheOptions(Path(root), shard_size, progress=False),
        )
        encoder = teacher.encoder  # load before the clock starts
        key = teacher.identity.key("", max_len, docs, shard_size)
        start, cpu_start = time.perf_counter(), time.process_time()
        encode_cached(docs, lambda batch: encoder.encode(batch, max_len), key, root, "doc", False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = sum(map(len, encoder.tokenizer(docs, truncation=True, max_length=max_len)["input_ids"]))
    print(
        f"MiniLM encode ({encoder.device}, fp32, max_len {max_len}, batch {batch_size}): "
        f"{len(docs):,} {beir_dir.name} docs ({tokens:,} tokens) in {seconds:.1f} s = "
        f"{len(docs) / seconds:,.1f} docs/s, {tokens / seconds:,.0f} tokens/s; "
        f"{cpu:.1f} CPU-s = {len(docs) / cpu:,.1f} docs per CPU-second "
        "(less sensitive to other load)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir-dir", type=Path, default=DEFAULT_BEIR.resolve())
    parser.add_argument("--docs", type=int, default=1024, help="SciFact documents to encode")
    parser.add_argument("--doc-max-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 50_000, 500_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=107, help="range_max + #positives")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    bench_encode(args.beir_dir, args.docs, args.doc_max_len, args.batch_size, args.shard_size)
    bench_bm25(args.beir_dir, args.k)
    bench_dense(args.sizes, args.dim, args.queries, args.k, query_chunk=4096)


if __name__ == "__main__":
    main()
