"""The DeepSpeed engine: its config from ours, the SFR recipe's schedule, and one optimizer step."""

from __future__ import annotations

import torch

from ..config import ConfigError, TrainConfig, deepspeed_problems, read_deepspeed_json
from .backend import deepspeed


def ds_config(cfg: TrainConfig, per_rank_queries: int) -> dict:
    """The DeepSpeed JSON named in the config, checked and completed from our own fields."""
    problems = deepspeed_problems(cfg.deepspeed.config, cfg.model.dtype)
    if problems:
        raise ConfigError(problems)
    out = read_deepspeed_json(cfg.deepspeed.config)
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


def optimizer_and_schedule(model: torch.nn.Module, cfg: TrainConfig, total_steps: int):
    """torch AdamW over ``model``'s trainable parameters and the SFR recipe's linear schedule."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        trainable,
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(cfg.optim.warmup_steps, total_steps))


def initialize(model: torch.nn.Module, cfg: TrainConfig, total_steps: int, per_rank_queries: int):
    """The engine over ``model``'s trainable parameters: torch AdamW, the linear schedule, our JSON."""
    config = ds_config(cfg, per_rank_queries)
    opt, sched = optimizer_and_schedule(model, cfg, total_steps)
    engine, _, _, _ = deepspeed().initialize(
        model=model, optimizer=opt, lr_scheduler=sched, config=config, dist_init_required=False
    )
    return engine


def current_lr(engine) -> float:
    return float(engine.optimizer.param_groups[0]["lr"])


def _params_grad_norm(engine) -> float | None:
    """Norm of gradients held on the parameters (ZeRO-0 fp32, where DeepSpeed reports none)."""
    grads = [p.grad.detach().float() for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def optimizer_step(engine) -> float | None:
    """Optimizer step; returns the global gradient norm before clipping."""
    fallback = _params_grad_norm(engine) if engine.zero_optimization_stage() == 0 else None
    engine.step()
    norm = engine.get_global_grad_norm()
    norm = fallback if norm is None else norm
    return None if norm is None else float(norm)


def skip_step(engine) -> None:
    """No update this step, but the schedule advances so lr stays a function of the step number."""
    engine.lr_scheduler.step()


def trainable_state(engine) -> dict[str, torch.Tensor]:
    """Trainable parameters as full tensors on CPU (ZeRO-3 partitions gathered first; every rank
    must call under ZeRO-3)."""
    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    if engine.zero_optimization_stage() == 3:
        with deepspeed().zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in named}
    return {n: p.detach().cpu().clone() for n, p in named}
