"""Any saved training checkpoint -> a PEFT adapter folder that ``TextEncoder.from_run`` and merge read.

Weights. With ``exclude_frozen_parameters`` a checkpoint holds only the LoRA weights. Under ZeRO-0/1/2
the model-states file holds them whole, in the engine's dtype. Under ZeRO-3 its tensors are empty
placeholders (this is why other toolkits export empty LoRA weights): the weights live only as fp32
partitions in the per-rank optimizer files, and DeepSpeed's own ``zero_to_fp32`` reassembles them;
we cast them to the engine's dtype, which is how ZeRO-3 derives its bf16 weights from the fp32 master.
Every tensor is checked against the shapes the checkpoint records, so an empty export cannot pass.

Safety. Every file is read with ``torch.load(weights_only=True)`` (``engine.checkpoints``), and every
``.pt`` file of the checkpoint is read so (memory-mapped, cheap) before anything else, even the
optimizer files a ZeRO-0/1/2 export does not need: a file that would run code when unpickled, or a
truncated one, is refused in one line naming it. ``out`` must be new or empty, so an export never
lands beside or over another model's files. Every problem is an ``ExportError``, never a traceback;
torch and DeepSpeed are imported only once the run folder itself has passed (a mistake there is one
line at once).

Adapter. Written the way training writes ``<run>/final`` (``run_dir.write_model_folder``, aside and
renamed into place): the same PEFT model built from the run's ``run.yaml`` (on the meta device: no
weights are read), ``save_pretrained`` with the checkpoint's state, the tokenizer, and
``sfr_ds.json`` pointing at the run's base model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError, TrainConfig, config_from_dict, read_yaml
from .run_dir import RunDir, RunDirError, base_dir_for, encode_meta, locate_checkpoint, write_model_folder

if TYPE_CHECKING:
    import torch

BACKBONE = "backbone."  # Embedder's attribute: engine names are backbone.<PeftModel name>


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported; the message names the fix."""


def meta_backbone(cfg: TrainConfig) -> torch.nn.Module:
    """The run's backbone on the meta device: module names and shapes, no weights read."""
    import torch
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


def run_config(run: RunDir) -> TrainConfig:
    """The run's ``run.yaml``; a damaged one is an error naming it (and its line, where YAML has one)."""
    try:
        return config_from_dict(read_yaml(run.config_file))
    except ConfigError as e:
        problems = "; ".join(e.problems)
        raise ExportError(
            problems if str(run.config_file) in problems else f"{run.config_file}: {problems}"
        ) from None


def step_of(tag_dir: Path) -> str:
    return (
        str(int(tag_dir.name.removeprefix("step-")))
        if re.fullmatch(r"step-\d+", tag_dir.name)
        else tag_dir.name
    )


def check_checkpoint_files(tag_dir: Path) -> None:
    """Every ``.pt`` file of the checkpoint unpickles with ``weights_only``: none runs code, none is
    cut short (``engine.checkpoints.unreadable``)."""
    from .engine.checkpoints import unreadable

    why = unreadable(tag_dir)
    if why is not None:
        raise ExportError(f"{why} (checkpoint step {step_of(tag_dir)})")


def trainables(tag_dir: Path) -> dict[str, torch.Tensor]:
    """``read_trainables``, with a checkpoint DeepSpeed did not write (keys missing, wrong types,
    ZeRO-3 partitions that do not fit) as one error naming the folder and its step."""
    from .engine.checkpoints import CheckpointError, read_trainables

    try:
        return read_trainables(tag_dir)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, AssertionError) as e:
        raise ExportError(
            f"{tag_dir}: not a checkpoint sfr-ds wrote (checkpoint step {step_of(tag_dir)}: "
            f"{type(e).__name__} {e})"
        ) from None


def check_base(cfg: TrainConfig, run: RunDir) -> None:
    """A random-init run's base weights exist only in ``base_model/``: without them no adapter of
    the run can ever be used, so none is written."""
    if cfg.model.random_init is not None and not run.base_model.is_dir():
        raise ExportError(
            f"{run.base_model}: the random-init base model of {run.root} is gone; it exists nowhere "
            "else, so an adapter of this run cannot be used (restore the run's base_model/ folder)"
        )


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's LoRA weights as a PEFT adapter folder in ``out`` (new or empty)."""
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; choose another --out (nothing was written)")
    try:
        run, tag_dir = locate_checkpoint(checkpoint)
    except (RunDirError, OSError, UnicodeDecodeError) as e:
        raise ExportError(str(e)) from None
    cfg = run_config(run)
    if not cfg.lora.enabled:
        raise ExportError(
            f"{run.root} trained without LoRA: its checkpoints hold full weights, not an adapter"
        )
    check_base(cfg, run)
    check_checkpoint_files(tag_dir)
    state = trainables(tag_dir)
    from .model import DTYPES, add_lora, load_tokenizer

    dtype = DTYPES[cfg.model.dtype]
    adapter_state = {k.removeprefix(BACKBONE): v.to(dtype) for k, v in state.items()}
    meta = encode_meta(cfg, base_dir_for(out, run) if cfg.model.random_init else None)
    meta["checkpoint"] = str(tag_dir)
    try:
        peft_model, tokenizer = add_lora(meta_backbone(cfg), cfg.lora), load_tokenizer(cfg.model)
    except (OSError, ValueError) as e:  # the run's base model or tokenizer cannot be found or read
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{run.config_file}: its model {cfg.model.name_or_path!r}: {reason}") from None
    return write_model_folder(out, peft_model, adapter_state, tokenizer, meta)
