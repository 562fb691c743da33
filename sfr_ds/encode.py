"""Texts to embeddings through exactly the training path, for mining, evaluation and merging.

The same ``format_query``, ``tokenize`` (EOS, truncation) and ``Embedder`` (pooling, normalisation)
as training, so a teacher or an evaluated model sees texts the way the trained model did.

Texts are encoded either as training's GradCache encodes them, packed longest first into chunks of
at most ``max_tokens`` real tokens run through the varlen attention (nothing computed on padding
whatever the mix of lengths), or (``max_tokens=None``) in padded batches of ``batch_size`` texts
sorted by length. Both give the same embeddings to 1e-5. ``"auto"`` (the default) packs on a GPU,
where the varlen kernels skip padding, and pads on a CPU, where attention runs on a padded grid
either way and sorted padded batches measured 10-20% faster (docs/benchmarks.md). Identical texts
are encoded once per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ModelConfig
from .data.tokens import format_query, pack_ids, pad_id, pad_ids, token_budget_chunks, token_ids
from .model import Embedder, load_backbone, load_tokenizer
from .run_dir import base_model_path, find_model_folder, is_adapter, read_meta

DEFAULT_MAX_TOKENS = 8192  # real tokens per packed chunk: a 7B model's activations fit any GPU
MaxTokens = int | str | None  # tokens per packed chunk, "auto", or None (padded batches)


def resolve_max_tokens(max_tokens: MaxTokens, device=None) -> int | None:
    """``"auto"``: packed chunks on a GPU, padded batches on a CPU (see the module docstring)."""
    if max_tokens != "auto":
        return max_tokens
    on_gpu = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda"
    return DEFAULT_MAX_TOKENS if on_gpu else None


@dataclass
class EncodeSettings:
    append_eos: bool
    query_max_len: int = 128
    doc_max_len: int = 256
    batch_size: int = 32  # texts per padded batch (max_tokens None)
    max_tokens: int | None = DEFAULT_MAX_TOKENS  # real tokens per packed chunk; None: padded batches


class TextEncoder:
    def __init__(self, embedder: Embedder, tokenizer, settings: EncodeSettings, device=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.embedder = embedder.to(self.device).eval()
        self.tokenizer, self.settings = tokenizer, settings

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_model_config(
        cls,
        cfg: ModelConfig,
        query_max_len=128,
        doc_max_len=256,
        batch_size=32,
        device=None,
        max_tokens: MaxTokens = "auto",
    ) -> TextEncoder:
        """A plain HF model (no adapter), e.g. ``ModelConfig("builtin:minilm", pooling="mean")``."""
        max_tokens = resolve_max_tokens(max_tokens, device)
        embedder = Embedder(load_backbone(cfg, packed=max_tokens is not None), cfg.pooling, cfg.normalize)
        return cls(
            embedder,
            load_tokenizer(cfg),
            EncodeSettings(cfg.appends_eos, query_max_len, doc_max_len, batch_size, max_tokens),
            device,
        )

    @classmethod
    def from_run(
        cls,
        path: str | Path,
        batch_size: int = 32,
        device=None,
        dtype: str | None = None,
        max_tokens: MaxTokens = "auto",
    ) -> TextEncoder:
        """A run directory or any sfr-ds model folder (its ``final``, an exported adapter, a merged
        model): the base model with the adapter applied, or the folder's own full weights,
        encoded as trained."""
        max_tokens = resolve_max_tokens(max_tokens, device)
        folder = find_model_folder(path)
        meta = read_meta(folder)
        adapter = is_adapter(folder)
        base = ModelConfig(
            name_or_path=base_model_path(folder, meta) if adapter else str(folder),
            pooling=meta["pooling"],
            normalize=meta["normalize"],
            append_eos=meta["append_eos"],
            dtype=dtype or meta["dtype"],
        )
        backbone = load_backbone(base, packed=max_tokens is not None)
        if adapter:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, str(folder))
        tokenizer = load_tokenizer(ModelConfig(name_or_path=str(folder)))
        settings = EncodeSettings(
            meta["append_eos"], meta["query_max_len"], meta["doc_max_len"], batch_size, max_tokens
        )
        return cls(Embedder(backbone, meta["pooling"], meta["normalize"]), tokenizer, settings, device)

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode(self, texts: list[str], max_len: int, progress: bool = False) -> np.ndarray:
        """[len(texts), d] float32 in the order given; identical texts are encoded once."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return np.zeros((0, 0), dtype=np.float32)
        ids = token_ids(self.tokenizer, unique, max_len, self.settings.append_eos)
        emb = self._packed(ids, progress) if self.settings.max_tokens else self._padded(ids, progress)
        row = {text: i for i, text in enumerate(unique)}
        return emb[[row[t] for t in texts]]

    def _packed(self, ids: list[list[int]], progress: bool) -> np.ndarray:
        """Chunks of at most ``max_tokens`` real tokens, longest sequences first, one row each."""
        chunks = token_budget_chunks([len(x) for x in ids], self.settings.max_tokens)
        out = None
        for chunk in tqdm(chunks, disable=not progress, desc="encode", unit="chunk"):
            packed = pack_ids([ids[i] for i in chunk]).to(self.device)
            emb = self.embedder(packed.input_ids, segments=packed.segments).float().cpu().numpy()
            out = np.empty((len(ids), emb.shape[1]), dtype=np.float32) if out is None else out
            out[chunk] = emb
        return out

    def _padded(self, ids: list[list[int]], progress: bool) -> np.ndarray:
        """Batches of ``batch_size`` sequences of similar length, padded to their longest."""
        order = np.argsort([-len(x) for x in ids], kind="stable")
        size, pad, out = self.settings.batch_size, pad_id(self.tokenizer), None
        for i in tqdm(range(0, len(ids), size), disable=not progress, desc="encode", unit="batch"):
            rows = order[i : i + size]
            tok = pad_ids([ids[j] for j in rows], pad).to(self.device)
            emb = self.embedder(tok.input_ids, tok.attention_mask).float().cpu().numpy()
            out = np.empty((len(ids), emb.shape[1]), dtype=np.float32) if out is None else out
            out[rows] = emb
        return out

    def encode_queries(self, queries: list[str], instruction: str, progress: bool = False) -> np.ndarray:
        return self.encode(
            [format_query(q, instruction) for q in queries], self.settings.query_max_len, progress
        )

    def encode_documents(self, docs: list[str], progress: bool = False) -> np.ndarray:
        return self.encode(list(docs), self.settings.doc_max_len, progress)
