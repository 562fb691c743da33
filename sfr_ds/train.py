"""The training loop, top to bottom: run folder, data plan, model, engine, resume, steps, adapter.

Run under any launcher (one process, torchrun, the deepspeed launcher, srun); ``sfr-ds train``
calls ``train``. Step s of every run sees the same global batch whatever the number of ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import dist
from .config import ConfigError, TrainConfig, config_from_dict, dump_config, read_yaml
from .data.prefetch import prefetched
from .data.step_inputs import TrainingData, arithmetic, per_rank_queries, rank_rows
from .data.tokens import to_device
from .engine import checkpoints
from .engine.training import current_lr, initialize, optimizer_step, skip_step, trainable_state
from .forward_backward import ChunkPolicy, forward_backward
from .guards import StepGate, StopFlag, memory_advice
from .loss import InfoNCE, check_matryoshka_dims
from .metrics import MetricsLog, log_line, step_row
from .model import backbone_config, build_embedder, count_parameters, load_tokenizer
from .run_dir import RunDir, Start, base_dir_for, config_changes, encode_meta, plan_start, write_model_folder


def say(msg: str) -> None:
    if dist.info().is_main:
        print(f"[sfr-ds] {msg}", flush=True)


def train(cfg: TrainConfig, resume: bool = False, after_backward: Callable | None = None) -> Path:
    """Run (or resume) training; ``after_backward(engine, step)`` sees each step's reduced gradients."""
    me = dist.setup(cfg.run.dist_timeout_s)
    stop = StopFlag()
    run = RunDir(cfg.run.output_dir)
    start = plan_run(run, cfg, resume)
    if start.finished:
        return run.root
    if start.tag and cfg.data.homogeneous_scope == "rank":
        checkpoints.check_world(run, start.tag, me.world, "data.homogeneous_scope=rank plans per rank")
    check_model_shape(cfg)
    data = TrainingData.load(cfg, me.world)
    chunks = ChunkPolicy.from_config(cfg.gradcache)
    for line in [*data.describe(), arithmetic(cfg, me.world, chunks)]:
        say(line)
    write_run_config(run, cfg)
    engine, tokenizer = build_engine(cfg, run, data.total_steps, me.world)
    first = checkpoints.load(engine, run, start.tag) if start.tag else 0
    if start.tag:
        say(f"resumed from {run.checkpoint(start.tag)} at step {first}")
    metrics = MetricsLog(
        run.metrics_file, run.tensorboard if cfg.run.tensorboard else None, me.is_main, first
    )
    loss = InfoNCE.from_config(cfg.loss, cfg.model.normalize)
    make = data.maker(rank_rows(cfg, me.rank, me.world), tokenizer, cfg)

    for step, (gb, inputs), waited in prefetched(make, range(first, data.total_steps)):
        t0 = time.perf_counter()
        gate = StepGate(step + 1, inputs.n_tokens, stop)
        row = step_row(step + 1, None, current_lr(engine), gb.dataset, 0, gb.epoch)
        with memory_advice(cfg):
            forward_backward(
                engine,
                inputs,
                loss.by_rows(to_device(inputs.positive, engine.device), inputs.allowed),
                chunks=chunks,
                gate=gate,
                check_replay=cfg.gradcache.check_replay,
            )
        row.update(loss=gate.loss / me.world, tokens=gate.tokens)
        if cfg.loss.false_negative_margin is not None:  # candidates the mask removed, all ranks
            row["false_negatives_masked"] = int(dist.all_reduce_sum(loss.take_masked()))
        if gate.nonfinite:
            skip_nonfinite(engine, cfg, row)
        else:
            if after_backward is not None:
                after_backward(engine, step + 1)
            row["grad_norm"] = optimizer_step(engine)
        row.update(seconds=round(waited + time.perf_counter() - t0, 4), input_wait=round(waited, 4))
        metrics.log(row)
        say(log_line(row, data.total_steps))
        done = step + 1 == data.total_steps
        if done or (step + 1) % cfg.run.save_every == 0 or gate.stop:
            checkpoints.save(engine, run, step + 1, cfg.run.keep_checkpoints)
        if gate.stop and not done:
            say(f"stop requested: checkpoint written at step {step + 1}; resume with --resume")
            metrics.close()
            return run.root
    metrics.close()
    say(f"done: adapter in {save_final(engine, tokenizer, cfg, run)}")
    return run.root


def plan_run(run: RunDir, cfg: TrainConfig, resume: bool) -> Start:
    """How the run starts in its folder (``run_dir.plan_start``; a checkpoint that cannot be read
    safely gives way to the newest one that can), with a resumed run's config checked against its
    own. Nothing is written yet; every rank takes the same decision."""
    start = plan_start(run, resume, cfg.run.save_every)
    if start.tag is not None:
        start = checkpoints.readable(run, start)
    if resume and run.config_file.exists():
        saved = config_from_dict(read_yaml(run.config_file))
        if changed := config_changes(saved.to_dict(), cfg.to_dict()):
            raise ConfigError(
                [
                    f"--resume: the config differs from {run.config_file} in {', '.join(changed)}; resume "
                    "with the run's own config (sfr-ds train --resume --output-dir DIR)"
                ]
            )
    if start.note:
        say(start.note)
    return start


def check_model_shape(cfg: TrainConfig) -> None:
    """Settings that depend on the model's shape (from its config, no weights), before any write."""
    if cfg.loss.matryoshka_dims:
        check_matryoshka_dims(cfg.loss, backbone_config(cfg.model).hidden_size)


def write_run_config(run: RunDir, cfg: TrainConfig) -> None:
    """``run.yaml``: the resolved config, where it now lies (a moved run records its new folder)."""
    if dist.info().is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run.config_file)
    dist.barrier()


def build_engine(cfg: TrainConfig, run: RunDir, total_steps: int, world: int):
    """(DeepSpeed engine, tokenizer): the backbone with LoRA and pooling, same initial weights on
    every rank; a random-init backbone keeps its weights in ``base_model/`` (nowhere else has them)."""
    torch.manual_seed(cfg.run.seed)
    tokenizer = load_tokenizer(cfg.model)
    keep_base = cfg.model.random_init is not None and dist.info().is_main
    model = build_embedder(
        cfg.model,
        cfg.lora,
        packed=cfg.gradcache.packing,
        save_base_to=str(run.base_model) if keep_base else None,
    )
    trainable, total = count_parameters(model)
    say(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.3f}%)")
    return initialize(model, cfg, total_steps, per_rank_queries(cfg, world)), tokenizer


def skip_nonfinite(engine, cfg: TrainConfig, row: dict) -> None:
    """A NaN/inf loss on any rank: stop naming the step, or skip its update (``run.on_nonfinite``)."""
    if cfg.run.on_nonfinite == "stop":
        raise FloatingPointError(
            f"non-finite loss at step {row['step']} (dataset {row['dataset']}, epoch {row['epoch']}); "
            "nothing was applied. Resume from the last checkpoint, or set run.on_nonfinite=skip to drop "
            "such steps"
        )
    skip_step(engine)
    row.update(loss=None, skipped=True)
    say(f"WARNING non-finite loss at step {row['step']} (dataset {row['dataset']}): update skipped")


def save_final(engine, tokenizer, cfg: TrainConfig, run: RunDir) -> Path:
    """The PEFT adapter (or full weights without LoRA), tokenizer and sfr_ds.json in ``final/``."""
    state = trainable_state(engine)  # collective under ZeRO-3: every rank takes part
    if dist.info().is_main:
        backbone = engine.module.backbone
        adapter = {n.removeprefix("backbone."): v for n, v in state.items()} if cfg.lora.enabled else None
        meta = encode_meta(cfg, base_dir_for(run.final, run) if cfg.model.random_init else None)
        write_model_folder(run.final, backbone, adapter, tokenizer, meta)
    dist.barrier()
    return run.final
