"""BM25 scores (bm25s): full score rows, and top-k as the same (scores, ids) arrays as the dense search.

The bm25 teacher (``teachers.BM25Rank``) ranks with it; ``tools/`` use it to build data."""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np

from sfr_ds.mining.search import topk_rows

# Rows of full BM25 scores held at once: bounds memory to chunk × corpus floats.
QUERY_CHUNK = 256


class BM25Scorer:
    """BM25 (Lucene variant, bm25s defaults) over lower-cased word tokens.

    Ties, frequent in BM25 (zero scores, duplicate documents), go to the lower id, as in
    ``search``; a query with no known token scores 0 everywhere and returns ids 0..k-1.
    """

    def __init__(self, corpus_texts: Sequence[str], stopwords: str | list[str] | None = "en"):
        if len(corpus_texts) == 0:
            raise ValueError("corpus is empty")
        self.stopwords = stopwords
        self.retriever = bm25s.BM25()
        self.retriever.index(self._tokenize(corpus_texts), show_progress=False)
        self.n_docs = len(corpus_texts)

    def _tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return bm25s.tokenize(list(texts), return_ids=False, stopwords=self.stopwords, show_progress=False)

    def scores(self, query_texts: Sequence[str]) -> np.ndarray:
        """Full BM25 score rows [nq, n_docs]; tokens unseen in the corpus are ignored."""
        vocab = self.retriever.vocab_dict
        rows = [
            self.retriever.get_scores_from_ids([vocab[t] for t in tokens if t in vocab])
            for tokens in self._tokenize(query_texts)
        ]
        return np.asarray(rows, np.float32).reshape(len(rows), self.n_docs)

    def search(self, query_texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents per query: (scores [nq, k] float32, ids [nq, k] int64), k clipped."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.n_docs)
        parts = [
            topk_rows(self.scores(query_texts[start : start + QUERY_CHUNK]), k)
            for start in range(0, len(query_texts), QUERY_CHUNK)
        ]
        if not parts:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
