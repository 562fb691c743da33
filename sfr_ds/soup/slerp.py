"""The slerp soup of two inputs: each LoRA layer's two deltas interpolated on the sphere and added to
the base weight, written as full weights.

A delta is peft's own merge of an adapter into a zero weight (exactly what ``merge_and_unload`` adds);
``slerp`` turns the direction by t times the deltas' angle and interpolates the norm linearly. The
result is not low-rank, so it is a merged folder laid out as ``sfr-ds merge`` lays it out, by the same
parts (``merge.shards`` streams the base one tensor at a time, ``merge.layout`` writes config,
tokenizer and sentence-transformers files, ``merge.probes`` checks it embeds). torch and transformers
are imported on use.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..io import new_folder
from ..merge import KEEP, OPTIONAL, MergeError, local_base
from ..run_dir import write_meta
from .inputs import SoupInput
from .linear import soup_meta


def slerp(t: float, a, b, eps: float = 1e-6):
    """Spherical interpolation of two tensors taken as flat vectors: the direction turns by t*theta
    from a's towards b's (theta: their angle), the norm goes linearly from |a| to |b|. mergekit
    applies sin((1-t)theta)/sin(theta) and sin(t*theta)/sin(theta) to the raw tensors, which is the
    same for equal norms (full weights of one base nearly are) but bends towards the longer one
    for deltas of different scalings. t=0 and t=1 give a and b exactly; nearly parallel, opposite
    or zero tensors are interpolated linearly. Reductions in float64, the tensors stay fp32."""
    import torch

    if t in (0, 1):
        return a if t == 0 else b
    na, nb = (float(torch.linalg.vector_norm(x, dtype=torch.float64)) for x in (a, b))
    if na == 0 or nb == 0:
        return a * (1 - t) + b * t
    cos = max(-1.0, min(1.0, float((a * b).sum(dtype=torch.float64)) / (na * nb)))
    theta = math.acos(cos)
    if math.sin(theta) < eps:
        return a * (1 - t) + b * t
    norm = (1 - t) * na + t * nb
    ca, cb = (math.sin(x * theta) / math.sin(theta) * norm for x in (1 - t, t))
    return a * (ca / na) + b * (cb / nb)


def layer_delta(module: str, weight, config, tensors):
    """The adapter's delta for one layer, by peft's own merge (with the adapter's scaling) into a zero
    weight: exactly what ``merge_and_unload`` adds to the base weight."""
    import torch

    from ..merge.layers import merge_layer

    return merge_layer(module, torch.zeros_like(weight, dtype=torch.float32), config, tensors)


def slerp_weights(
    a: SoupInput, b: SoupInput, base: Path, t: float, out: Path, dtype: str, max_shard_size
) -> None:
    """Base + slerp of the two adapters' deltas, layer by layer, into safetensors shards in ``out``."""
    from transformers.utils.hub import convert_file_size_to_int

    from ..merge.layers import base_prefix, lora_module, read_adapter
    from ..merge.shards import ShardWriter, stream_tensors
    from ..model import DTYPES

    (config_a, groups_a), (config_b, groups_b) = read_adapter(a.adapter), read_adapter(b.adapter)
    if groups_a.keys() != groups_b.keys():
        raise MergeError(
            f"{b.adapter}: LoRA on other layers than {a.adapter}; a soup needs LoRA on the same layers"
        )
    prefix, done = base_prefix(base), set()
    writer = ShardWriter(out, convert_file_size_to_int(max_shard_size))
    for key, tensor in stream_tensors(base):
        module = lora_module(key, groups_a, prefix)
        if module is not None:
            da = layer_delta(module, tensor, config_a, groups_a[module])
            db = layer_delta(module, tensor, config_b, groups_b[module])
            tensor = tensor.float() + slerp(t, da, db)
            done.add(module)
        writer.add(key, tensor.to(DTYPES[dtype]) if tensor.is_floating_point() else tensor)
    if missing := sorted(set(groups_a) - done):
        raise MergeError(f"{len(missing)} adapter layers have no weight in {base}, e.g. {missing[:3]}")
    writer.close()


def write_slerp(
    a: SoupInput,
    b: SoupInput,
    t: float,
    out: Path,
    dtype: str | None,
    max_shard_size,
    instruction,
    check: bool,
) -> tuple[Path, str]:
    """The slerp soup as a merged folder (weights, config, tokenizer, sentence-transformers layout)."""
    from ..merge.layout import DEFAULT_INSTRUCTION, write_config, write_sentence_transformers, write_tokenizer
    from ..merge.shards import DEFAULT_MAX_SHARD_SIZE

    base = Path(local_base(a.adapter, a.meta))
    dtype, instruction = dtype or a.meta["dtype"], instruction or DEFAULT_INSTRUCTION
    meta = {
        "merged": True,
        "merged_from_base": str(base),
        "dtype": dtype,
        **{k: v for k, v in soup_meta([a, b], out, {}).items() if k in (*KEEP, *OPTIONAL, "soup")},
        "query_instruction": instruction,
    }
    meta["soup"] = {"method": "slerp", "t": t, **meta["soup"]}
    note = ""
    with new_folder(out) as part:
        slerp_weights(a, b, base, t, part, dtype, max_shard_size or DEFAULT_MAX_SHARD_SIZE)
        hidden = write_config(base, part, dtype)
        write_tokenizer(a.adapter, part, a.meta)
        write_sentence_transformers(part, meta, hidden, instruction)
        if check:
            note = "; " + probe_check(part, meta, dtype, instruction)
        write_meta(part, meta)
    return out, note


def probe_check(folder: Path, meta: dict, dtype: str, instruction: str) -> str:
    """The folder loads as a plain transformers user loads it and embeds the probe texts finitely."""
    from ..merge.probes import merged_embeddings

    emb = merged_embeddings(folder, meta, dtype, instruction)
    if not bool(emb.isfinite().all()):
        raise MergeError(f"{folder}: the soup embeds probe texts as non-finite numbers; it is not usable")
    return f"it loads and embeds {len(emb)} probe texts"
