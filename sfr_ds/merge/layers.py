"""One LoRA-targeted layer folded into its weight, exactly as peft folds it in the whole model.

Apart from the streaming of weights (``shards``) and the output layout (``layout``), so that any
loop over base tensors, a merge or a soup of adapters, folds layers the same way.

Each LoRA-targeted weight is upcast to fp32 and placed, under its own name, in a skeleton module
that holds only that layer (an ``nn.Linear``, or transformers' ``Conv1D`` when the adapter says
``fan_in_fan_out``). peft then does everything itself: ``PeftModel`` wraps the layer from the
adapter's own ``LoraConfig`` (r, lora_alpha and their per-module patterns, rslora,
fan_in_fan_out), ``set_peft_model_state_dict`` loads the adapter tensors read by
``load_peft_weights``, and ``merge_and_unload`` folds them in: the code that
``PeftModel.merge_and_unload`` runs on the whole model, one layer at a time, in fp32.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import MergeError

PEFT_PREFIX = "base_model.model."
UNSUPPORTED = {
    "use_dora": "DoRA",
    "modules_to_save": "modules_to_save",
    "lora_bias": "lora_bias",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "target_parameters",
}


def read_adapter(adapter: Path):
    """(peft LoraConfig, {module name: that module's adapter tensors under their saved keys})."""
    from peft import PeftConfig
    from peft.utils import load_peft_weights

    config = PeftConfig.from_pretrained(str(adapter))
    if config.peft_type != "LORA":
        raise MergeError(f"{adapter}: a {config.peft_type} adapter; sfr-ds merge folds LoRA only")
    used = [label for field, label in UNSUPPORTED.items() if getattr(config, field, None)]
    if used:
        raise MergeError(
            f"{adapter}: the adapter uses {', '.join(used)}, which the shard-wise merge does "
            "not fold; merge it with PeftModel.merge_and_unload() instead"
        )
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_peft_weights(str(adapter), device="cpu").items():
        module, sep, part = key.removeprefix(PEFT_PREFIX).partition(".lora_")
        if not sep or part not in ("A.weight", "B.weight"):
            raise MergeError(
                f"{adapter}: adapter tensor {key!r} is not a LoRA A/B weight of a linear "
                "layer; merge it with PeftModel.merge_and_unload() instead"
            )
        groups.setdefault(module, {})[key] = tensor
    return config, groups


def base_prefix(base: Path) -> str:
    """The prefix a task-head checkpoint puts before the backbone's names ('model' for Llama)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(str(base))
    cls = MODEL_MAPPING.get(type(config), None)
    return getattr(cls, "base_model_prefix", "") if cls is not None else ""


def lora_module(key: str, modules: dict, prefix: str) -> str | None:
    """The adapter module whose weight ``key`` is, with or without the checkpoint's backbone prefix."""
    if not key.endswith(".weight"):
        return None
    name = key.removesuffix(".weight")
    if name in modules:
        return name
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in modules:
        return name[len(prefix) + 1 :]
    return None


def skeleton(name: str, weight: torch.Tensor, fan_in_fan_out: bool) -> nn.Module:
    """A module tree holding one layer at ``name``, so peft matches it exactly as in the full model."""
    root = parent = nn.Module()
    *path, leaf = name.split(".")
    for part in path:
        child = nn.Module()
        parent.add_module(part, child)
        parent = child
    if fan_in_fan_out:  # GPT-2 style Conv1D keeps weights as [in, out]
        from transformers.pytorch_utils import Conv1D

        layer = Conv1D(nf=weight.shape[1], nx=weight.shape[0]).to("meta")
    else:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    parent.add_module(leaf, layer)
    return root


def merge_layer(name: str, weight: torch.Tensor, config, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """W + delta for one layer, computed by peft's own merge in fp32."""
    from peft import PeftModel, set_peft_model_state_dict

    layer_config = copy.deepcopy(config)
    layer_config.target_modules = [name]
    layer_config.inference_mode = True
    with warnings.catch_warnings():  # the patterns of the other layers match nothing here, as they should
        warnings.filterwarnings("ignore", message="The following (rank|alpha)_pattern keys did not match")
        model = PeftModel(skeleton(name, weight.float(), config.fan_in_fan_out), layer_config)
    loaded = set_peft_model_state_dict(model, tensors)
    missing = [k for k in loaded.missing_keys if ".lora_" in k]
    if missing or loaded.unexpected_keys:
        raise MergeError(
            f"peft did not load the adapter for {name}: missing {missing}, "
            f"unexpected {loaded.unexpected_keys}"
        )
    return model.merge_and_unload().get_submodule(name).weight.detach()
