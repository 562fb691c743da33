"""The linear soup: k LoRA adapters over one base as ONE LoRA adapter of their summed rank, exactly
the weighted average of the k merged models.

sum_i w_i s_i B_i A_i = [w_1 s_1 B_1 ... w_k s_k B_k] [A_1; ...; A_k], so each layer's A blocks are
stacked as they are and each B block is scaled by w_i * s_i, s_i being the adapter's own scaling as
peft computes it (``peft_scalings`` reads it off peft's layers built on the meta device rather than
recomputing alpha/r, rslora and the rank/alpha patterns here). The soup is saved with lora_alpha = r
and no rslora (scaling 1, checked as peft reads it back), so nothing is scaled twice. Its own module
because it is the one soup that needs no full weights: a small adapter that peft, ``sfr-ds eval`` and
``sfr-ds merge`` read like any other. torch, peft and safetensors are imported on use.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from ..io import atomic_write, new_folder
from ..merge import OPTIONAL, MergeError
from ..run_dir import ADAPTER_CONFIG, base_model_path, write_meta
from .inputs import SoupInput


def lora_pairs(adapter: Path, groups: dict) -> dict[str, tuple]:
    """{module: (A, B)} of an adapter's tensors as ``layers.read_adapter`` groups them."""
    from ..merge.layers import PEFT_PREFIX

    pairs = {}
    for module, tensors in groups.items():
        a, b = (tensors.get(f"{PEFT_PREFIX}{module}.lora_{x}.weight") for x in "AB")
        if a is None or b is None:
            raise MergeError(f"{adapter}: {module} lacks its lora_A or lora_B weight")
        pairs[module] = (a, b)
    return pairs


def read_lora(inp: SoupInput):
    """(peft LoraConfig, {module: (A, B, scaling)}): the adapter read by peft, its scalings peft's own."""
    from ..merge.layers import read_adapter

    config, groups = read_adapter(inp.adapter)
    pairs = lora_pairs(inp.adapter, groups)
    scalings = peft_scalings(config, pairs)
    layers = {}
    for module, (a, b) in pairs.items():
        r, scaling = scalings[module]
        if a.shape[0] != r or b.shape[1] != r:
            raise MergeError(
                f"{inp.adapter / ADAPTER_CONFIG}: r says rank {r} for {module}, its weights have "
                f"{a.shape[0]}; the adapter is inconsistent"
            )
        layers[module] = (a, b, scaling)
    return config, layers


def peft_scalings(config, pairs: dict[str, tuple]) -> dict[str, tuple[int, float]]:
    """{module: (rank, scaling)} as peft sets them: the adapter's config applied by ``PeftModel`` to a
    module tree of just its layers (``pairs``: {module: (A, B)}, for the shapes) on the meta device,
    then read off each LoRA layer. No weights are made or read."""
    import torch
    from peft import PeftModel
    from torch import nn

    from ..merge.layers import PEFT_PREFIX

    config = copy.deepcopy(config)
    config.target_modules, config.inference_mode = sorted(pairs), True
    config.layers_to_transform = config.layers_pattern = config.exclude_modules = None
    root = nn.Module()
    with torch.device("meta"):
        for module, (a, b) in pairs.items():
            *path, leaf = module.split(".")
            parent = root
            for part in path:
                if part not in parent._modules:
                    parent.add_module(part, nn.Module())
                parent = parent._modules[part]
            if config.fan_in_fan_out:  # GPT-2 style Conv1D
                from transformers.pytorch_utils import Conv1D

                layer = Conv1D(nf=b.shape[0], nx=a.shape[1])
            else:
                layer = nn.Linear(a.shape[1], b.shape[0], bias=False)
            parent.add_module(leaf, layer)
        model = PeftModel(root, config)
    out = {}
    for name, layer in model.named_modules():
        if "default" in getattr(layer, "scaling", {}):
            out[name.removeprefix(PEFT_PREFIX)] = (layer.r["default"], float(layer.scaling["default"]))
    if missing := sorted(set(pairs) - set(out)):
        raise MergeError(
            f"peft made no LoRA layer for {missing[:3]}; the adapter config does not match its weights"
        )
    return out


def concatenate(loras: list[dict], weights: list[float], where: list[Path]) -> dict[str, tuple]:
    """{module: (A stacked, B blocks side by side, each times w_i * s_i)} in fp32."""
    import torch

    modules = loras[0].keys()
    for lora, folder in zip(loras[1:], where[1:]):
        if lora.keys() != modules:
            extra, lacking = sorted(lora.keys() - modules), sorted(modules - lora.keys())
            raise MergeError(
                f"{folder}: LoRA on other layers than {where[0]} (has {extra[:3]}, lacks {lacking[:3]}); "
                "a soup needs LoRA on the same layers"
            )
    out = {}
    for module in modules:
        parts = [lora[module] for lora in loras]
        a = torch.cat([p[0].float() for p in parts])
        b = torch.cat([p[1].float() * (w * p[2]) for p, w in zip(parts, weights)], dim=1)
        out[module] = (a, b)
    return out


def soup_config(config, ranks: dict[str, int]):
    """The first input's LoraConfig with each layer's total rank and lora_alpha equal to it: scaling 1.
    Layers off the most common rank are named in rank_pattern/alpha_pattern, longest name first:
    peft takes the first pattern that matches the end of a layer's name."""
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    config = copy.deepcopy(config)
    config.r = config.lora_alpha = common
    config.use_rslora, config.inference_mode = False, True
    odd = sorted((m for m, r in ranks.items() if r != common), key=lambda m: (-len(m), m))
    config.rank_pattern = {m: ranks[m] for m in odd}
    config.alpha_pattern = dict(config.rank_pattern)
    return config


def check_unit_scaling(folder: Path, pairs: dict[str, tuple]) -> None:
    """peft reads the written soup with each layer's full rank and scaling exactly 1 (else the B blocks,
    which carry w_i * s_i already, would be scaled again)."""
    from peft import PeftConfig

    for module, (r, scaling) in peft_scalings(PeftConfig.from_pretrained(str(folder)), pairs).items():
        if r != pairs[module][0].shape[0] or scaling != 1.0:
            raise MergeError(
                f"{folder / ADAPTER_CONFIG}: peft reads {module} with rank {r} and scaling {scaling:g}, "
                f"not {pairs[module][0].shape[0]} and 1; the soup would not be the average"
            )


def soup_meta(inputs: list[SoupInput], out: Path, extra: dict) -> dict:
    """sfr_ds.json of a soup: the first input's (a random-init base located from ``out``), less any
    Matryoshka widths the inputs do not share, plus ``soup``."""
    meta = {k: v for k, v in inputs[0].meta.items() if k not in ("checkpoint", "soup", *OPTIONAL)}
    for key in OPTIONAL:
        if all(key in i.meta and i.meta[key] == inputs[0].meta[key] for i in inputs):
            meta[key] = inputs[0].meta[key]
    if meta.get("random_init"):
        base = base_model_path(inputs[0].adapter, inputs[0].meta)
        meta["base_model_dir"] = os.path.relpath(base, out.resolve())
    records = [
        {"path": str(i.given), "adapter": str(i.adapter.resolve()), "digest": i.digest} for i in inputs
    ]
    return {**meta, "soup": {**extra, "inputs": records}}


def write_linear(
    inputs: list[SoupInput],
    weights: list[float],
    out: Path,
    extra: dict | None = None,
    files: dict | None = None,
) -> Path:
    """The rank-concatenated adapter of ``inputs`` (weights already summing to 1) into ``out``, with
    the first input's tokenizer and ``files`` ({name: text}) beside it, built aside, renamed into place."""
    from safetensors.torch import save_file

    from ..config import ModelConfig
    from ..merge.layers import PEFT_PREFIX
    from ..model import load_tokenizer

    read = [read_lora(i) for i in inputs]
    blocks = concatenate([layers for _, layers in read], weights, [i.adapter for i in inputs])
    tensors = {}
    for module, (a, b) in blocks.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    config = soup_config(read[0][0], {m: a.shape[0] for m, (a, _) in blocks.items()})
    meta = soup_meta(inputs, out, {"method": "linear", "weights": weights, **(extra or {})})
    with new_folder(out) as part:
        config.save_pretrained(str(part))
        check_unit_scaling(part, blocks)
        save_file(tensors, str(part / "adapter_model.safetensors"), metadata={"format": "pt"})
        load_tokenizer(ModelConfig(name_or_path=str(inputs[0].adapter))).save_pretrained(str(part))
        for name, text in (files or {}).items():
            atomic_write(part / name, text)
        write_meta(part, meta)
    return out
