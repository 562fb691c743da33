"""DeepSpeed: the only module that imports it. Engine setup, the seed's schedule, checkpoints.

Checkpoints live in ``<run>/checkpoints/<tag>/`` and ``<run>/checkpoints/latest`` names the newest
complete one. The pointer is replaced atomically only after every rank has written its shards and
a ``complete.json`` marker, so a crash during a save leaves ``latest`` on the previous good one.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path
from unittest import mock

import torch

from . import dist
from .config import TrainConfig

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed

# On CPU DeepSpeed JIT-compiles a shared-memory collective op (~30 s) at init; gloo does the
# collectives fine without it.
if not torch.cuda.is_available():
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None

# Fields sfr-ds derives from its own config; a DeepSpeed JSON that sets them would silently disagree.
OWNED = {
    "train_batch_size": "data.global_batch_size",
    "train_micro_batch_size_per_gpu": "data.global_batch_size",
    "gradient_accumulation_steps": "gradcache.chunk_size (GradCache replaces accumulation)",
    "gradient_clipping": "optim.grad_clip",
    "optimizer": "optim.* (a torch AdamW is passed in: no JIT build)",
    "scheduler": "optim.warmup_steps (the seed's linear warm-up and decay)",
    "fp16": "model.dtype (fp32 or bf16)",
}


def ds_config(cfg: TrainConfig, per_rank_queries: int) -> dict:
    """The DeepSpeed JSON named in the config, checked and completed from our own fields."""
    path = cfg.deepspeed.config
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    problems = [
        f"{path}: remove '{k}'; sfr-ds sets it from {where}" for k, where in OWNED.items() if k in raw
    ]
    bf16 = bool(raw.get("bf16", {}).get("enabled", False))
    if bf16 != (cfg.model.dtype == "bf16"):
        problems.append(
            f"{path}: bf16.enabled={bf16} but model.dtype={cfg.model.dtype!r}; pick a "
            "matching DeepSpeed config (e.g. ds_configs/zero2_bf16.json for bf16, "
            "ds_configs/zero2.json for fp32)"
        )
    if problems:
        from .config import ConfigError

        raise ConfigError(problems)
    out = dict(raw)
    out.update(
        train_micro_batch_size_per_gpu=per_rank_queries,
        gradient_accumulation_steps=1,
        gradient_clipping=cfg.optim.grad_clip,
        steps_per_print=10**9,
        zero_allow_untested_optimizer=True,
    )
    out.setdefault("wall_clock_breakdown", False)
    return out


def linear_schedule(warmup: int, total: int):
    """lr factor for step s: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(1, total - warmup))

    return factor


def initialize(model: torch.nn.Module, cfg: TrainConfig, total_steps: int, per_rank_queries: int):
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        trainable,
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(cfg.optim.warmup_steps, total_steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=opt,
        lr_scheduler=sched,
        config=ds_config(cfg, per_rank_queries),
        dist_init_required=False,
    )
    return engine


def current_lr(engine) -> float:
    return float(engine.optimizer.param_groups[0]["lr"])


def params_grad_norm(engine) -> float | None:
    """Norm of gradients held on the parameters (ZeRO-0 fp32, where DeepSpeed reports none)."""
    grads = [p.grad.detach().float() for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def step(engine) -> float | None:
    """Optimizer step; returns the global gradient norm before clipping."""
    fallback = params_grad_norm(engine) if engine.zero_optimization_stage() == 0 else None
    engine.step()
    norm = engine.get_global_grad_norm()
    norm = fallback if norm is None else norm
    return None if norm is None else float(norm)


def skip_step(engine) -> None:
    """No update this step, but the schedule advances so lr stays a function of the step number."""
    engine.lr_scheduler.step()


# ----------------------------------------------------------------------------- checkpoints


def latest_tag(ckpt_root: str | os.PathLike) -> str | None:
    p = Path(ckpt_root) / "latest"
    if not p.exists():
        return None
    tag = p.read_text().strip()
    if not (Path(ckpt_root) / tag / "complete.json").exists():
        raise RuntimeError(
            f"{p} names {tag!r}, which has no complete.json marker: the checkpoint "
            "is broken (this should never happen; report it)"
        )
    return tag


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(engine, ckpt_root: str | os.PathLike, step: int, state: dict, keep: int) -> str:
    """Write ``step-NNNNNNNN`` on all ranks, then mark it complete and move ``latest`` to it."""
    root = Path(ckpt_root)
    tag = f"step-{step:08d}"
    me = dist.info()
    if me.is_main and (root / tag).exists():
        shutil.rmtree(root / tag)  # a leftover of a save that crashed before completing
    dist.barrier()
    engine.save_checkpoint(
        str(root), tag=tag, client_state=state, save_latest=False, exclude_frozen_parameters=True
    )
    torch.save(rng_state(), root / tag / f"rng_rank{me.rank:05d}.pt")
    dist.barrier()
    if me.is_main:
        _atomic_write(root / tag / "complete.json", json.dumps({"step": step, "world": me.world}))
        _atomic_write(root / "latest", tag)
        _prune(root, keep)
    dist.barrier()
    return tag


def _prune(root: Path, keep: int) -> None:
    tags = sorted(p.name for p in root.glob("step-*") if (p / "complete.json").exists())
    for old in tags[:-keep]:
        shutil.rmtree(root / old, ignore_errors=True)


def load_checkpoint(engine, ckpt_root: str | os.PathLike, tag: str) -> dict:
    """Restore module, optimizer, scheduler and this rank's RNG; returns the client state."""
    _, state = engine.load_checkpoint(
        str(ckpt_root),
        tag=tag,
        load_module_strict=False,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if state is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_root}/{tag}")
    rng = Path(ckpt_root) / tag / f"rng_rank{dist.info().rank:05d}.pt"
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=True))
    return state


def rng_state() -> dict:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def full_grads(engine) -> dict[str, torch.Tensor]:
    """Reduced gradients of the trainable parameters, whole, after backward (all ranks must call)."""
    from deepspeed.utils import safe_get_full_grad

    out = {}
    for n, p in engine.module.named_parameters():
        if p.requires_grad:
            g = safe_get_full_grad(p)
            out[n] = None if g is None else g.detach().float().cpu().clone()
    return out


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message says what is wrong."""


def _deepspeed_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [LossScaler, ZeroStageEnum]


def safe_load(path, map_location="cpu", **kwargs):
    """``torch.load`` with ``weights_only=True`` and DeepSpeed's two plain classes allowed."""
    kwargs.pop("weights_only", None)
    with torch.serialization.safe_globals(_deepspeed_globals()):
        return torch.load(path, map_location=map_location, weights_only=True, **kwargs)


class _SafeTorch:
    """``torch`` as DeepSpeed's zero_to_fp32 sees it, but with the safe ``load``."""

    load = staticmethod(safe_load)

    def __getattr__(self, name):
        return getattr(torch, name)


def model_states(tag_dir: Path) -> dict:
    files = sorted(tag_dir.glob("*model_states.pt"))
    if not files:
        raise CheckpointError(f"{tag_dir}: no DeepSpeed *model_states.pt file")
    return safe_load(files[0])


def read_trainables(tag_dir: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable (LoRA) parameters, whole, under the engine's names, read safely.

    ZeRO-0/1/2 keep them whole in the model-states file; under ZeRO-3 that file holds empty
    placeholders and DeepSpeed's own ``zero_to_fp32`` reassembles the fp32 partitions. Every tensor
    is checked against the shapes the checkpoint records, so an empty export cannot pass.
    """
    states = model_states(tag_dir)
    stage = states["ds_config"].get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        from deepspeed.utils import zero_to_fp32

        with mock.patch.object(zero_to_fp32, "torch", _SafeTorch()):  # only its torch.load changes
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(
                str(tag_dir.parent), tag=tag_dir.name, exclude_frozen_parameters=True
            )
    else:
        state = states["module"]
    shapes = {k: v for group in states["param_shapes"] for k, v in group.items()}
    wrong = [k for k, shape in shapes.items() if k not in state or state[k].shape != shape]
    if wrong or not shapes:
        raise CheckpointError(
            f"{tag_dir}: ZeRO-{stage} checkpoint gave {len(wrong)} of {len(shapes)} trainable "
            f"tensors missing or mis-shaped (e.g. {wrong[:2]})"
        )
    return {k: state[k] for k in shapes}


def module_state(engine) -> dict[str, torch.Tensor]:
    """Trainable parameters as full tensors on CPU (ZeRO-3 partitions gathered first)."""
    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in named}
    return {n: p.detach().cpu().clone() for n, p in named}
