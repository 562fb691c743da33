"""Any saved training checkpoint -> a PEFT adapter folder that ``TextEncoder.from_run`` and merge read.

Weights. With ``exclude_frozen_parameters`` a checkpoint holds only the LoRA weights. Under ZeRO-0/1/2
the model-states file holds them whole, in the engine's dtype. Under ZeRO-3 its tensors are empty
placeholders (this is why other toolkits export empty LoRA weights): the weights live only as fp32
partitions in the per-rank optimizer files, and DeepSpeed's own ``zero_to_fp32`` reassembles them;
we cast them to the engine's dtype, which is how ZeRO-3 derives its bf16 weights from the fp32 master.
Every tensor is checked against the shapes the checkpoint records, so an empty export cannot pass.

Safety. Files are read with ``torch.load(weights_only=True)``. DeepSpeed's optimizer files pickle two
of its own plain classes (``ZeroStageEnum``, ``LossScaler``): those two, and only they, are allowed.
DeepSpeed's reader asks for ``weights_only=False``; it runs here with a ``torch`` whose ``load``
is the safe one.

Adapter. Written the way training writes ``<run>/final``: the same PEFT model built from the run's
``run.yaml`` (on the meta device: no weights are read), ``save_pretrained`` with the checkpoint's
state, the tokenizer, and ``sfr_ds.json`` pointing at the run's base model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml

from .config import TrainConfig, config_from_dict
from .encode import META, encode_meta
from .engine import CheckpointError, read_trainables
from .model import DTYPES, add_lora, load_tokenizer

BACKBONE = "backbone."  # Embedder's attribute: engine names are backbone.<PeftModel name>


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported; the message names the fix."""


def locate(checkpoint: str | Path) -> tuple[Path, Path]:
    """(run dir, tag dir) for a run dir, its checkpoints dir (both: the latest) or one tag dir."""
    path = Path(checkpoint).resolve()
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / "latest").exists():
        path = path / (path / "latest").read_text().strip()
    if not (path / "complete.json").exists():
        raise ExportError(
            f"{checkpoint}: not a complete sfr-ds checkpoint (no complete.json); give "
            "<run>/checkpoints/step-NNNNNNNN, <run>/checkpoints or <run>"
        )
    run = path.parent.parent
    if not (run / "run.yaml").exists():
        raise ExportError(f"{run}: no run.yaml next to the checkpoints")
    return run, path


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
    """Write the checkpoint's LoRA weights as a PEFT adapter folder in ``out``."""
    run, tag_dir = locate(checkpoint)
    cfg = config_from_dict(yaml.safe_load((run / "run.yaml").read_text()))
    if not cfg.lora.enabled:
        raise ExportError(f"{run} trained without LoRA: its checkpoints hold full weights, not an adapter")
    try:
        state = read_trainables(tag_dir)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    dtype = DTYPES[cfg.model.dtype]
    adapter_state = {k.removeprefix(BACKBONE): v.to(dtype) for k, v in state.items()}
    out = Path(out).resolve()
    add_lora(meta_backbone(cfg), cfg.lora).save_pretrained(str(out), state_dict=adapter_state)
    load_tokenizer(cfg.model).save_pretrained(str(out))
    meta = encode_meta(cfg, os.path.relpath(run / "base_model", out) if cfg.model.random_init else None)
    meta["checkpoint"] = str(tag_dir)
    (out / META).write_text(json.dumps(meta, indent=2))
    return out
