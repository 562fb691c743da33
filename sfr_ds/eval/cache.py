"""Embeddings cached per (model, task, split), keyed by the exact text the model read.

A key is the hash of the max length and the formatted text (instruction included), so a cached
row can never be served for a text read another way; a crashed or re-submitted task re-encodes
only what is missing, and the length analysis reuses what ``sfr-ds eval`` encoded. New texts are
encoded in pieces of ``piece`` texts (longest first, as the encoder batches them) and each piece is
appended as one shard (``.npy`` + ``.keys``, renamed into place): a task killed half-way through a
large corpus resumes at its last finished piece, and concurrent Slurm jobs never rewrite each
other's files.

Mining has its own cache (``sfr_ds.mining.encode_cache``) because it needs the opposite layout:
one folder per whole text list, sharded by position so the missing shards can be dealt
round-robin over the ranks of one multi-rank encode, which resumes shard by shard and is loaded
back as one array in corpus order. Here rows are keyed by each text, so whatever lists a
(task, split) is read in (mteb's query and corpus calls, a re-submitted task, the length
analysis) they reuse each other's rows, and concurrent Slurm jobs append shards without agreeing
on anything first.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io import atomic_file, atomic_write


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def text_key(text: str, max_len: int) -> str:
    return hashlib.sha1(f"{max_len}\n{text}".encode()).hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | os.PathLike, piece: int = 2048):
        self.root, self.piece = Path(root), piece
        self._rows: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def folder(self, task: str, split: str) -> Path:
        return self.root / _safe(task) / _safe(split)

    def rows(self, task: str, split: str) -> dict[str, np.ndarray]:
        """key -> embedding for everything cached under (task, split); read once per process."""
        if (task, split) not in self._rows:
            rows: dict[str, np.ndarray] = {}
            folder = self.folder(task, split)
            for keys_file in sorted(folder.glob("*.keys")) if folder.exists() else []:
                emb = np.load(keys_file.with_suffix(".npy"))
                rows.update(zip(keys_file.read_text().split(), emb))
            self._rows[(task, split)] = rows
        return self._rows[(task, split)]

    def _write(self, task: str, split: str, keys: list[str], emb: np.ndarray) -> None:
        stem = self.folder(task, split) / uuid.uuid4().hex  # unique: concurrent jobs never collide
        with atomic_file(stem.with_suffix(".npy"), "wb") as f:
            np.save(f, emb)  # to a file object: np.save on a path would append ".npy" to it
        atomic_write(stem.with_suffix(".keys"), "\n".join(keys))  # last: a shard counts once it exists

    def get_or_encode(
        self, task: str, split: str, texts: list[str], max_len: int, encode: Callable[[list[str]], np.ndarray]
    ) -> np.ndarray:
        """Embeddings of ``texts`` (already formatted) in order; ``encode`` sees only new texts."""
        rows = self.rows(task, split)
        keys = [text_key(t, max_len) for t in texts]
        text_of = dict(zip(keys, texts))
        missing = sorted(dict.fromkeys(k for k in keys if k not in rows), key=lambda k: -len(text_of[k]))
        for start in range(0, len(missing), self.piece):
            part = missing[start : start + self.piece]
            emb = np.asarray(encode([text_of[k] for k in part]), dtype=np.float32)
            self._write(task, split, part, emb)
            rows.update(zip(part, emb))
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([rows[k] for k in keys])
