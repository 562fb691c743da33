"""Exact inner-product top-k with FAISS, chunked over queries, with deterministic tie-breaking.

Mining needs the same candidate list on every run, so ties are broken by lower id first. FAISS
returns ties in heap order, so every row is re-sorted by (score desc, id asc), and a row whose
k-th score equals the last score retrieved (a tie that may continue past the cut, hiding a lower
id) is searched again deeper until the tie ends inside the retrieved list.
"""

from __future__ import annotations

import faiss
import numpy as np

# faiss-gpu's k-selection limit; deeper tie re-searches on GPU stop here.
GPU_MAX_K = 2048


def search(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    query_chunk: int = 4096,
    use_gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k corpus rows by inner product: (scores [nq, k] float32, ids [nq, k] int64).

    ``k`` is clipped to the corpus size. Queries go through in chunks of ``query_chunk`` and
    FAISS tiles the corpus itself, so only a chunk × tile block of scores exists at once.
    ``use_gpu=None`` uses every GPU that faiss sees (fp16 storage, corpus sharded across them);
    scores may then differ from fp32 in the low bits. The corpus is copied into the index.
    """
    queries, corpus = _check_inputs(queries, corpus, k, query_chunk)
    k = min(k, len(corpus))
    gpu = faiss.get_num_gpus() > 0 if use_gpu is None else use_gpu
    index = _build_index(corpus, gpu)
    max_depth = min(len(corpus), GPU_MAX_K) if gpu else len(corpus)
    if k > max_depth:
        raise ValueError(f"k={k} exceeds faiss-gpu's limit {GPU_MAX_K}; pass use_gpu=False")
    parts = [
        _topk_exact(index, queries[start : start + query_chunk], k, min(k + 1, max_depth), max_depth)
        for start in range(0, len(queries), query_chunk)
    ]
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _check_inputs(
    queries: np.ndarray, corpus: np.ndarray, k: int, query_chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fail early with a message naming the bad argument; FAISS itself would crash or return -1."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"need queries [nq, d] and corpus [nd, d], got {queries.shape} and {corpus.shape}")
    if len(corpus) == 0:
        raise ValueError("corpus is empty")
    if not (np.isfinite(queries).all() and np.isfinite(corpus).all()):
        raise ValueError("queries and corpus must be finite (found NaN or inf)")
    return queries, corpus


def _build_index(corpus: np.ndarray, gpu: bool) -> faiss.Index:
    """IndexFlatIP on CPU, or fp16 shards of it over all GPUs."""
    if gpu and faiss.get_num_gpus() == 0:
        raise RuntimeError("use_gpu=True but faiss sees no GPU (is faiss-gpu installed?)")
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    if not gpu:
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    options.useFloat16 = True
    return faiss.index_cpu_to_all_gpus(index, co=options)


def _topk_exact(
    index: faiss.Index, queries: np.ndarray, k: int, depth: int, max_depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``depth`` >= k deep; rows whose boundary tie reaches the last result go deeper.

    If the last retrieved score is below the k-th, every document tied with the k-th was
    retrieved, so sorting by (score desc, id asc) and cutting at k is exact. Deeper rows are
    taken whole from their own search, so each row's scores come from a single FAISS call.
    """
    scores, ids = sort_ties(*index.search(queries, depth))
    if depth < max_depth:
        tied = np.flatnonzero(scores[:, k - 1] == scores[:, depth - 1])
        if len(tied):
            deeper = _topk_exact(index, queries[tied], k, min(2 * depth, max_depth), max_depth)
            scores[tied, :k], ids[tied, :k] = deeper
    return scores[:, :k].astype(np.float32), ids[:, :k].astype(np.int64)


def sort_ties(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by score descending, then id ascending."""
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of a dense [m, n] score block, ties to the lower column id.

    Used where a teacher (BM25) yields full score rows; partition first so a row costs O(n).
    """
    m, n = scores.shape
    k = min(k, n)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    ids = np.empty((m, k), np.int64)
    for row, (s, v) in enumerate(zip(scores, kth)):
        above = np.flatnonzero(s > v)
        ids[row] = np.concatenate([above, np.flatnonzero(s == v)[: k - len(above)]])
    return sort_ties(np.take_along_axis(scores, ids, 1).astype(np.float32), ids)
