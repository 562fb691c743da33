"""Embeddings of a text list, encoded in shards over all ranks and cached on disk.

A teacher's corpus embeddings cost the most in mining (hours for a 7B model on a large corpus),
and mining rounds re-use them with other windows or seeds, so they live in a folder named by a
hash of everything that changes them (model, adapter, instruction, max length, pooling, ...).
Shards of ``shard_size`` texts are written as ``.npy`` through a temporary file and
``os.replace``, so a shard on disk is always whole: a run killed mid-way restarts and encodes
only the shards that are missing. With several ranks the cache folder must be on a file system
every rank sees (rank 0 reads all shards).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sfr_ds import dist

KEY_FILE = "key.json"


@dataclass(frozen=True)
class CacheKey:
    """Everything an embedding depends on; its hash names the cache folder."""

    model: str
    adapter: str  # content hash of the adapter ('' for a plain model)
    instruction: str  # '' for documents
    max_len: int
    pooling: str
    normalize: bool
    append_eos: bool
    dtype: str
    texts: str  # ``texts_digest`` of the encoded list: another corpus is another cache
    shard_size: int  # shard boundaries depend on it

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def folder_name(self, kind: str) -> str:
        """``{kind}-{model slug}-{hash}``: readable in ``ls``, unique by the hash."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model.rstrip("/").split("/")[-1])[-40:]
        return f"{kind}-{slug}-{self.digest()}"


def texts_digest(texts: Sequence[str]) -> str:
    """Hash of the texts in order (lengths included, so no two lists collide by concatenation)."""
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardedCache:
    """One cache folder: shard ``i`` holds the embeddings of texts [i*shard_size, (i+1)*shard_size)."""

    folder: Path
    n_texts: int
    shard_size: int

    @property
    def n_shards(self) -> int:
        return -(-self.n_texts // self.shard_size)

    def rows(self, i: int) -> range:
        return range(i * self.shard_size, min((i + 1) * self.shard_size, self.n_texts))

    def path(self, i: int) -> Path:
        return self.folder / f"shard-{i:06d}.npy"

    def missing(self) -> list[int]:
        return [i for i in range(self.n_shards) if not self.path(i).exists()]

    def write(self, i: int, emb: np.ndarray) -> None:
        """Write shard ``i`` whole or not at all (a killed writer leaves only its temporary file)."""
        if emb.shape[0] != len(self.rows(i)):
            raise ValueError(f"shard {i} needs {len(self.rows(i))} rows, got {emb.shape[0]}")
        tmp = self.path(i).with_name(f".{self.path(i).name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(emb, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path(i))

    def load(self) -> np.ndarray:
        """All shards in order as one [n_texts, d] float32 array."""
        parts = []
        for i in range(self.n_shards):
            part = np.load(self.path(i))
            if part.shape[0] != len(self.rows(i)):
                raise RuntimeError(
                    f"{self.path(i)} holds {part.shape[0]} rows, expected "
                    f"{len(self.rows(i))}: delete {self.folder} and re-run"
                )
            parts.append(part)
        return np.concatenate(parts)


def encode_cached(
    texts: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    key: CacheKey,
    root: str | os.PathLike,
    kind: str,
    progress: bool = True,
) -> tuple[ShardedCache, int]:
    """Make sure every shard of ``texts`` is on disk; returns the cache and how many shards were
    already there. Call on every rank: the missing shards are dealt round-robin over the ranks
    (rank 0's view of the folder is broadcast so all ranks agree), then all ranks meet at a
    barrier, after which any rank may ``load()``. ``encode`` is only called for missing shards,
    so a fully cached run never loads the model."""
    cache = ShardedCache(Path(root) / key.folder_name(kind), len(texts), key.shard_size)
    me = dist.info()
    if me.is_main:
        _write_key(cache.folder, key)
    missing = dist.broadcast_object(cache.missing() if me.is_main else None)
    mine = missing[me.rank :: me.world]
    bar = tqdm(
        total=sum(len(cache.rows(i)) for i in mine),
        unit="text",
        position=me.rank,
        desc=f"encode {kind}" + (f" (rank {me.rank})" if me.world > 1 else ""),
        disable=not progress or not mine,
    )
    for i in mine:
        rows = cache.rows(i)
        cache.write(i, encode([texts[j] for j in rows]))
        bar.update(len(rows))
    bar.close()
    dist.barrier()
    if me.is_main and (lost := cache.missing()):
        raise RuntimeError(
            f"{len(lost)} shard(s) other ranks encoded are not in {cache.folder}: "
            "the cache dir must be on a file system every rank shares"
        )
    return cache, cache.n_shards - len(missing)


def _write_key(folder: Path, key: CacheKey) -> None:
    """Record what the folder holds (for people: the folder name is only a hash)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / KEY_FILE).exists():
        tmp = folder / f".{KEY_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(key), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, folder / KEY_FILE)
