"""Safetensors weights streamed in one tensor at a time and out in bounded shards.

Apart from the layer merge (``layers``) so that anything that rewrites a model's weights tensor by
tensor (a merge, a soup of adapters) keeps the same memory bound: the base model is never loaded
whole. ``stream_tensors`` copies each input tensor out of its file, which is mapped only meanwhile;
``ShardWriter`` collects output tensors into shards of at most ``max_bytes`` and writes each as soon
as it is full. The peak is about one output shard plus one tensor, whatever the model size
(figures in docs/benchmarks.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from ..io import atomic_write_json
from ..model import DTYPES
from .errors import MergeError
from .layers import base_prefix, lora_module, merge_layer, read_adapter

DEFAULT_MAX_SHARD_SIZE = "2GB"


def weight_files(base: Path) -> list[Path]:
    """The safetensors files of a model folder, in the order of its index."""
    index = base / "model.safetensors.index.json"
    if index.exists():
        names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [base / n for n in names]
    if (base / "model.safetensors").exists():
        return [base / "model.safetensors"]
    raise MergeError(
        f"{base}: no model.safetensors or model.safetensors.index.json; merge reads "
        "safetensors only (re-save the base with save_pretrained(..., safe_serialization=True))"
    )


def read_tensor(path: Path, key: str) -> torch.Tensor:
    """One tensor, its file mapped only while it is copied out: a file left open keeps every page
    read so far resident in this process (a whole 10 GB shard by its end)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def stream_tensors(base: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight of the model folder ``base``, one tensor in memory at a time."""
    from safetensors import safe_open

    for path in weight_files(base):
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        for key in keys:
            yield key, read_tensor(path, key)


class ShardWriter:
    """Collects tensors into shards of at most ``max_bytes`` and writes each as soon as it is full."""

    def __init__(self, out: Path, max_bytes: int):
        self.out, self.max_bytes = out, max_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffered = 0  # bytes in buffer
        self.files: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffered + size > self.max_bytes:
            self.flush()
        self.buffer[key] = tensor.contiguous()
        self.buffered += size
        self.total += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        path = self.out / f"shard-{len(self.files):05d}.tmp"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.buffer)))
        self.buffer, self.buffered = {}, 0

    def close(self) -> list[str]:
        """Name the shards as transformers does and write the index when there is more than one."""
        if self.buffer:
            self.flush()
        n = len(self.files)
        names = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        weight_map = {}
        for (path, keys), name in zip(self.files, names):
            path.rename(self.out / name)
            weight_map.update(dict.fromkeys(keys, name))
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            atomic_write_json(self.out / "model.safetensors.index.json", index)
        return names


def merge_weights(
    adapter: Path, base: Path, out: Path, dtype: str, max_shard_size: str = DEFAULT_MAX_SHARD_SIZE
) -> list[str]:
    """Base shards + LoRA -> merged safetensors shards in ``out``; returns the file names."""
    from transformers.utils.hub import convert_file_size_to_int

    config, groups = read_adapter(adapter)
    prefix = base_prefix(base)
    writer = ShardWriter(out, convert_file_size_to_int(max_shard_size))
    done: set[str] = set()
    wrapped = False  # a base saved with LoRA layers in it (*.base_layer.weight) cannot be merged into
    for key, tensor in stream_tensors(base):
        wrapped |= key.endswith(".base_layer.weight")
        module = lora_module(key, groups, prefix)
        if module is not None:
            tensor = merge_layer(module, tensor, config, groups[module])
            done.add(module)
        if tensor.is_floating_point():
            tensor = tensor.to(DTYPES[dtype])
        writer.add(key, tensor)
    missing = sorted(set(groups) - done)
    if missing:
        raise MergeError(
            f"{len(missing)} adapter layers have no weight in {base}, e.g. {missing[:3]}; "
            + (
                "its layers are saved PEFT-wrapped (*.base_layer.weight): re-save the base without LoRA"
                if wrapped
                else "is it the base model this adapter was trained on?"
            )
        )
    return writer.close()
