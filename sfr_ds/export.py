"""Any saved training checkpoint -> a PEFT adapter folder that ``TextEncoder.from_run`` and merge read.

Weights. With ``exclude_frozen_parameters`` a checkpoint holds only the LoRA weights. Under ZeRO-0/1/2
the model-states file holds them whole, in the engine's dtype. Under ZeRO-3 its tensors are empty
placeholders (this is why other toolkits export empty LoRA weights): the weights live only as fp32
partitions in the per-rank optimizer files, and DeepSpeed's own ``zero_to_fp32`` reassembles them;
we cast them to the engine's dtype, which is how ZeRO-3 derives its bf16 weights from the fp32 master.
Every tensor is checked against the shapes the checkpoint records, so an empty export cannot pass.

Safety. Every file is read with ``torch.load(weights_only=True)`` (``engine.checkpoints``); ``out``
must be new or empty, so an export never lands beside or over another model's files.

Adapter. Written the way training writes ``<run>/final`` (``run_dir.write_model_folder``, aside and
renamed into place): the same PEFT model built from the run's ``run.yaml`` (on the meta device: no
weights are read), ``save_pretrained`` with the checkpoint's state, the tokenizer, and
``sfr_ds.json`` pointing at the run's base model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from .config import TrainConfig, config_from_dict
from .engine.checkpoints import CheckpointError, read_trainables
from .model import DTYPES, add_lora, load_tokenizer
from .run_dir import RunDirError, base_dir_for, encode_meta, locate_checkpoint, write_model_folder

BACKBONE = "backbone."  # Embedder's attribute: engine names are backbone.<PeftModel name>


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported; the message names the fix."""


def meta_backbone(cfg: TrainConfig) -> torch.nn.Module:
    """The run's backbone on the meta device: module names and shapes, no weights read."""
    from transformers import AutoConfig, AutoModel

    from .zoo import resolve_model_path

    if cfg.model.random_init is not None:
        arch = dict(cfg.model.random_init)
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    else:
        config = AutoConfig.from_pretrained(
            resolve_model_path(cfg.model.name_or_path), trust_remote_code=cfg.model.trust_remote_code
        )
    with torch.device("meta"):
        return AutoModel.from_config(config, trust_remote_code=cfg.model.trust_remote_code)


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's LoRA weights as a PEFT adapter folder in ``out`` (new or empty)."""
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; choose another --out (nothing was written)")
    try:
        run, tag_dir = locate_checkpoint(checkpoint)
    except RunDirError as e:
        raise ExportError(str(e)) from None
    cfg = config_from_dict(yaml.safe_load(run.config_file.read_text(encoding="utf-8")))
    if not cfg.lora.enabled:
        raise ExportError(
            f"{run.root} trained without LoRA: its checkpoints hold full weights, not an adapter"
        )
    try:
        state = read_trainables(tag_dir)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    dtype = DTYPES[cfg.model.dtype]
    adapter_state = {k.removeprefix(BACKBONE): v.to(dtype) for k, v in state.items()}
    meta = encode_meta(cfg, base_dir_for(out, run) if cfg.model.random_init else None)
    meta["checkpoint"] = str(tag_dir)
    peft_model = add_lora(meta_backbone(cfg), cfg.lora)
    return write_model_folder(out, peft_model, adapter_state, load_tokenizer(cfg.model), meta)
