"""Texts to embeddings through exactly the training path, for mining, evaluation and merging.

The same ``format_query``, ``tokenize`` (EOS, truncation) and ``Embedder`` (pooling, normalisation)
as training, so a teacher or an evaluated model sees texts the way the trained model did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ModelConfig
from .data.tokens import format_query, tokenize
from .model import Embedder, load_backbone, load_tokenizer
from .run_dir import base_model_path, find_model_folder, is_adapter, read_meta


@dataclass
class EncodeSettings:
    append_eos: bool
    query_max_len: int = 128
    doc_max_len: int = 256
    batch_size: int = 32


class TextEncoder:
    def __init__(self, embedder: Embedder, tokenizer, settings: EncodeSettings, device=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.embedder = embedder.to(self.device).eval()
        self.tokenizer, self.settings = tokenizer, settings

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_model_config(
        cls, cfg: ModelConfig, query_max_len=128, doc_max_len=256, batch_size=32, device=None
    ) -> TextEncoder:
        """A plain HF model (no adapter), e.g. ``ModelConfig("builtin:minilm", pooling="mean")``."""
        embedder = Embedder(load_backbone(cfg), cfg.pooling, cfg.normalize)
        return cls(
            embedder,
            load_tokenizer(cfg),
            EncodeSettings(cfg.appends_eos, query_max_len, doc_max_len, batch_size),
            device,
        )

    @classmethod
    def from_run(
        cls, path: str | Path, batch_size: int = 32, device=None, dtype: str | None = None
    ) -> TextEncoder:
        """A run directory or any sfr-ds model folder (its ``final``, an exported adapter, a merged
        model): the base model with the adapter applied, or the folder's own full weights,
        encoded as trained."""
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
        backbone = load_backbone(base)
        if adapter:
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(backbone, str(folder))
        tokenizer = load_tokenizer(ModelConfig(name_or_path=str(folder)))
        settings = EncodeSettings(meta["append_eos"], meta["query_max_len"], meta["doc_max_len"], batch_size)
        return cls(Embedder(backbone, meta["pooling"], meta["normalize"]), tokenizer, settings, device)

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode(self, texts: list[str], max_len: int, progress: bool = False) -> np.ndarray:
        """[len(texts), d] float32; batches of similar length keep padding low."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), 0), dtype=np.float32)
        chunks = []
        bs = self.settings.batch_size
        for i in tqdm(range(0, len(texts), bs), disable=not progress, desc="encode", unit="batch"):
            idx = order[i : i + bs]
            tok = tokenize(self.tokenizer, [texts[j] for j in idx], max_len, self.settings.append_eos)
            tok = tok.to(self.device)
            chunks.append(self.embedder(tok.input_ids, tok.attention_mask).float().cpu().numpy())
        if chunks:
            emb = np.concatenate(chunks)
            out = np.empty_like(emb)
            out[order] = emb
        return out

    def encode_queries(self, queries: list[str], instruction: str, progress: bool = False) -> np.ndarray:
        return self.encode(
            [format_query(q, instruction) for q in queries], self.settings.query_max_len, progress
        )

    def encode_documents(self, docs: list[str], progress: bool = False) -> np.ndarray:
        return self.encode(list(docs), self.settings.doc_max_len, progress)
