"""Teachers that rank a corpus for each query: BM25, any HF model, or one of our own runs.

Every teacher answers ``rank(queries, instructions, corpus, positives, depth)`` with the top
``depth`` documents per query (best first, ties to the lower id) and each query's best score
among its positives (the false-negative margin's reference when a positive ranks below
``depth``). Dense teachers encode through ``sfr_ds.encode.TextEncoder``, the training path
(query format, EOS, truncation, pooling), with embeddings sharded over ranks and cached on disk;
the search itself runs on rank 0, which alone gets a ``Ranking`` (other ranks get None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Protocol

import numpy as np

from sfr_ds import dist
from sfr_ds.data.tokens import format_query
from sfr_ds.encode import TextEncoder
from sfr_ds.mining.bm25 import QUERY_CHUNK, BM25Scorer
from sfr_ds.mining.encode_cache import CacheKey, encode_cached, texts_digest
from sfr_ds.mining.plan import check_teacher, self_teacher_folder
from sfr_ds.mining.search import search, topk_rows
from sfr_ds.run_dir import content_digest

Texts = Sequence[str]
Positives = Sequence[set[int]]  # per query, the corpus rows of its positives


@dataclass
class Ranking:
    scores: np.ndarray  # [nq, depth] float32, best first
    ids: np.ndarray  # [nq, depth] int64 corpus rows; -1 marks "no candidate"
    positive_scores: list[float | None]  # best teacher score among each query's positive ids


class Teacher(Protocol):
    name: str

    def rank(
        self, queries: Texts, instructions: Texts, corpus: Texts, positives: Positives, depth: int
    ) -> Ranking | None: ...


# ------------------------------------------------------------------------------------- BM25


class BM25Rank:
    """Lexical teacher. Instructions are ignored (they would only add the same words to every
    query). Candidates scoring 0 share no word with the query and come in id order, not by
    difficulty, so they are returned as -1 (absent) rather than as hard negatives."""

    name = "bm25"

    def rank(
        self, queries: Texts, instructions: Texts, corpus: Texts, positives: Positives, depth: int
    ) -> Ranking | None:
        if not dist.info().is_main:
            return None
        bm25 = BM25Scorer(corpus)
        scores, ids, pos_scores = [], [], []
        for start in range(0, len(queries), QUERY_CHUNK):
            full = bm25.scores(queries[start : start + QUERY_CHUNK])  # [chunk, n_docs]
            s, i = topk_rows(full, depth)
            scores.append(s)
            ids.append(np.where(s > 0, i, -1))
            pos_scores += [
                float(full[r, sorted(p)].max()) if p else None
                for r, p in enumerate(positives[start : start + len(full)])
            ]
        return Ranking(np.concatenate(scores), np.concatenate(ids), pos_scores)


# ------------------------------------------------------------------------------------ dense


@dataclass(frozen=True)
class EncoderIdentity:
    """What a dense teacher's embeddings depend on, known before the model is loaded."""

    model: str
    adapter: str
    pooling: str
    normalize: bool
    append_eos: bool
    dtype: str
    query_max_len: int
    doc_max_len: int

    def key(self, instruction: str, max_len: int, texts: Sequence[str], shard_size: int) -> CacheKey:
        return CacheKey(
            self.model,
            self.adapter,
            instruction,
            max_len,
            self.pooling,
            self.normalize,
            self.append_eos,
            self.dtype,
            texts_digest(texts),
            shard_size,
        )


@dataclass(frozen=True)
class CacheOptions:
    root: Path
    shard_size: int = 4096
    progress: bool = True


class DenseRank:
    """A model embeds queries and documents; FAISS exact inner product ranks them.

    ``query_instruction`` None formats each query with its record's instruction (as training
    does); a string replaces it for every query, and '' sends the bare query (for models not
    trained with instructions). The model is loaded only if some shard is missing.
    """

    def __init__(
        self,
        name: str,
        identity: EncoderIdentity,
        load: Callable[[], TextEncoder],
        cache: CacheOptions,
        query_instruction: str | None = None,
    ):
        self.name, self.identity, self._load = name, identity, load
        self.cache, self.query_instruction = cache, query_instruction

    @cached_property
    def encoder(self) -> TextEncoder:
        return self._load()

    def rank(
        self, queries: Texts, instructions: Texts, corpus: Texts, positives: Positives, depth: int
    ) -> Ranking | None:
        used = [ins if self.query_instruction is None else self.query_instruction for ins in instructions]
        docs = self._embed(list(corpus), "doc", "", self.identity.doc_max_len)
        texts = [format_query(q, ins) for q, ins in zip(queries, used)]
        qs = self._embed(texts, "query", "\n".join(sorted(set(used))), self.identity.query_max_len)
        if qs is None or docs is None:
            return None
        scores, ids = search(qs, docs, depth)
        pos_scores = [float((docs[sorted(p)] @ qs[i]).max()) if p else None for i, p in enumerate(positives)]
        return Ranking(scores, ids, pos_scores)

    def _embed(self, texts: list[str], kind: str, instruction: str, max_len: int) -> np.ndarray | None:
        """Encode (or find cached) on all ranks; the [n, d] embeddings on rank 0, None elsewhere."""
        key = self.identity.key(instruction, max_len, texts, self.cache.shard_size)
        cache, n_cached = encode_cached(
            texts,
            lambda batch: self.encoder.encode(batch, max_len),
            key,
            self.cache.root,
            kind,
            self.cache.progress,
        )
        if not dist.info().is_main:
            return None
        print(
            f"[sfr-ds] {kind} embeddings: {cache.n_shards} shards of up to {cache.shard_size}, "
            f"{n_cached} were cached, in {cache.folder}",
            flush=True,
        )
        return cache.load()


# ---------------------------------------------------------------------------- construction


@dataclass(frozen=True)
class EncodeOptions:
    """Dense-teacher settings; None takes the run's own value (``self:``) or the default."""

    pooling: str = "auto"  # auto: 'last' for a causal LM, else 'mean'
    query_max_len: int | None = None  # default 128
    doc_max_len: int | None = None  # default 256
    dtype: str | None = None  # default bf16 on GPU, fp32 on CPU (bf16 matmuls crawl on most CPUs)
    batch_size: int = 32  # texts per padded batch (max_tokens None)
    query_instruction: str | None = None
    max_tokens: int | str | None = "auto"  # per packed chunk; "auto": packed on GPU, padded on CPU


def make_teacher(spec: str, options: EncodeOptions, cache: CacheOptions) -> Teacher:
    """``bm25``, ``self:RUN_DIR`` (a run or its ``final`` adapter folder), or a model path or
    built-in name (``builtin:minilm``) loaded as a plain HF encoder."""
    if spec == "bm25":
        return BM25Rank()
    if spec.startswith("self:"):
        return _self_teacher(spec, options, cache)
    return _hf_teacher(spec, options, cache)


def _default_dtype() -> str:
    import torch

    return "bf16" if torch.cuda.is_available() else "fp32"


def guess_pooling(name_or_path: str) -> str:
    """'last' for decoder LMs (e5-mistral style), 'mean' for BERT-like encoders (MiniLM, E5)."""
    from transformers import AutoConfig

    from sfr_ds.zoo import resolve_model_path

    archs = AutoConfig.from_pretrained(resolve_model_path(name_or_path)).architectures or []
    return "last" if any("CausalLM" in a for a in archs) else "mean"


def _hf_teacher(spec: str, options: EncodeOptions, cache: CacheOptions) -> DenseRank:
    from sfr_ds.config import ModelConfig

    check_teacher(spec, options.pooling)
    pooling = guess_pooling(spec) if options.pooling == "auto" else options.pooling
    cfg = ModelConfig(name_or_path=spec, pooling=pooling, dtype=options.dtype or _default_dtype())
    qlen, dlen = options.query_max_len or 128, options.doc_max_len or 256
    model = str(Path(spec).resolve()) if Path(spec).exists() else spec
    identity = EncoderIdentity(model, "", pooling, cfg.normalize, cfg.appends_eos, cfg.dtype, qlen, dlen)
    load = partial(
        TextEncoder.from_model_config, cfg, qlen, dlen, options.batch_size, max_tokens=options.max_tokens
    )
    return DenseRank(f"{spec} ({pooling} pooling)", identity, load, cache, options.query_instruction)


def _self_teacher(spec: str, options: EncodeOptions, cache: CacheOptions) -> DenseRank:
    """One of our runs, encoded exactly as it was trained; pooling is the run's, not an option."""
    folder, meta = self_teacher_folder(spec, options.pooling)
    dtype = options.dtype or _default_dtype()
    identity = EncoderIdentity(
        meta["base_model"],
        content_digest(folder),
        meta["pooling"],
        meta["normalize"],
        meta["append_eos"],
        dtype,
        options.query_max_len or meta["query_max_len"],
        options.doc_max_len or meta["doc_max_len"],
    )
    load = partial(
        TextEncoder.from_run, folder, options.batch_size, dtype=dtype, max_tokens=options.max_tokens
    )
    return DenseRank(f"self:{folder}", identity, load, cache, options.query_instruction)
