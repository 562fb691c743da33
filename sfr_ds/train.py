"""The training loop, top to bottom: data plan, model, engine, resume, steps, checkpoints, adapter.

Run under any launcher (one process, torchrun, the deepspeed launcher, srun); ``sfr-ds train``
calls ``train``. Step s of every run sees the same global batch whatever the number of ranks.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dist
from . import engine as ds
from .config import ConfigError, TrainConfig, config_from_dict, dump_config
from .data.batch import NegativeDrawer, TextBatch, allowed_mask, build_text_batch
from .data.load import group_by_dataset, load_training_data
from .data.prefetch import prefetched
from .data.records import Record
from .data.sampler import BatchPlan, GlobalBatch
from .data.tokens import Tokens, to_device, tokenize
from .encode import META, encode_meta
from .forward_backward import gradcache_backward, plain_backward
from .loss import contrastive_loss
from .metrics import MetricsLog
from .model import append_eos, build_embedder, count_parameters, load_tokenizer

FINAL = "final"  # <run>/final: the PEFT adapter, tokenizer and sfr_ds.json


class StopFlag:
    """Set by SIGTERM/SIGUSR1; every rank checks the OR of all flags at each step boundary."""

    def __init__(self):
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.raised = True


def say(msg: str) -> None:
    if dist.info().is_main:
        print(f"[sfr-ds] {msg}", flush=True)


class StepGate:
    """The step's one collective, before any parameter gradient: loss, tokens, stop and NaN flags.

    ``SFR_DS_FAULT_NAN_STEP=N`` (a testing hook) turns rank 0's loss at step N into NaN.
    """

    def __init__(self, step: int, n_tokens: int, stop: StopFlag):
        self.step, self.n_tokens, self.stop_flag = step, n_tokens, stop
        self.loss, self.tokens, self.stop, self.nonfinite = float("nan"), 0, False, False

    def __call__(self, loss: torch.Tensor) -> bool:
        value = float(loss)
        if os.environ.get("SFR_DS_FAULT_NAN_STEP") == str(self.step) and dist.info().is_main:
            value = float("nan")
        bad = not math.isfinite(value)
        totals = dist.all_reduce_sum(
            torch.tensor(
                [0.0 if bad else value, self.n_tokens, float(self.stop_flag.raised), float(bad)],
                dtype=torch.float64,
            )
        )
        self.loss, self.tokens = float(totals[0]), int(totals[1])
        self.stop, self.nonfinite = bool(totals[2] > 0), bool(totals[3] > 0)
        return not self.nonfinite


@contextmanager
def memory_advice(cfg: TrainConfig):
    """A step that runs out of memory (device, or host on CPU) says which setting to lower."""
    try:
        yield
    except RuntimeError as e:
        # torch.cuda's name for it also exists on torch 2.4 (torch.OutOfMemoryError is newer)
        if not (isinstance(e, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(e)):
            raise
        g = cfg.gradcache
        if not g.enabled:
            fix = "gradcache.enabled=true (activations of one chunk at a time)"
        elif g.packing:
            fix = (
                f"a smaller gradcache.chunk_tokens (now {g.chunk_tokens}; a chunk's activations grow "
                "with it: about 9.4 MiB per token for Mistral-7B in bf16, docs/benchmarks.md)"
            )
        else:
            fix = f"a smaller gradcache.chunk_size (now {g.chunk_size}), or gradcache.packing=true"
        if not cfg.model.gradient_checkpointing:
            fix += ", or model.gradient_checkpointing=true (slower: one more forward)"
        raise type(e)(f"out of memory in a training step; set {fix}. The error was: {e}") from e


@dataclass
class StepInputs:
    """This rank's share of one global step, all on the host (made ahead on the prefetch thread)."""

    queries: Tokens
    docs: Tokens
    positive: torch.Tensor  # [n] each query's positive among ``docs`` or the gathered documents
    allowed: torch.Tensor  # [n, N] bool: which of those documents each query may score
    gather: bool  # the loss scores every rank's documents (in-batch negatives)

    @property
    def n_tokens(self) -> int:
        return self.queries.n_tokens + self.docs.n_tokens


def infonce(positive: torch.Tensor, allowed: torch.Tensor, temperature: float):
    """loss_fn(q, docs, rows): queries ``rows``' share of this rank's mean InfoNCE over ``docs``.

    ``allowed`` [n, N] stays on the host (pinned on CUDA) and travels one block of rows at a time, so
    device memory does not grow with queries x documents.
    """
    if torch.cuda.is_available():
        allowed = allowed.pin_memory()

    def loss_fn(q: torch.Tensor, docs: torch.Tensor, rows: slice) -> torch.Tensor:
        mask = allowed[rows].to(q.device, non_blocking=True)
        share = len(positive[rows]) / len(positive)
        return contrastive_loss(q, docs, positive[rows], mask, temperature) * share

    return loss_fn


def step_inputs(batch: TextBatch, rows: slice, tokenizer, cfg: TrainConfig) -> StepInputs:
    """This rank's tokens, and what its loss scores, over the (gathered) documents of the global batch."""
    group, eos = batch.group, append_eos(cfg.model)
    queries = tokenize(tokenizer, batch.queries[rows], cfg.data.query_max_len, eos)
    docs = tokenize(tokenizer, batch.docs[rows.start * group : rows.stop * group], cfg.data.doc_max_len, eos)
    allowed = allowed_mask(batch, rows, cfg.loss.mask_duplicates)
    gather = batch.needs_gather()  # labels-only batches need no other rank's documents
    offset = 0 if gather else rows.start * group
    if not gather:
        allowed = allowed[:, offset : offset + len(docs)]
    positive = torch.arange(rows.start, rows.stop) * group - offset
    return StepInputs(queries, docs, positive, allowed, gather)


def input_maker(
    records: list[Record], plan: BatchPlan, drawer: NegativeDrawer, rows: slice, tokenizer, cfg: TrainConfig
) -> Callable[[int], tuple[GlobalBatch, StepInputs]]:
    """make(step): the plan's global batch for ``step`` and this rank's inputs, a pure function of the step."""

    def make(step: int) -> tuple[GlobalBatch, StepInputs]:
        gb = plan.batch(step)
        return gb, step_inputs(build_text_batch(records, gb.indices, gb.epoch, drawer), rows, tokenizer, cfg)

    return make


def batch_arithmetic(cfg: TrainConfig, world: int) -> tuple[int, str]:
    G = cfg.data.global_batch_size
    if G % world:
        raise ConfigError(
            [f"data.global_batch_size={G} is not divisible by the {world} ranks; use a multiple of {world}"]
        )
    n, k = G // world, cfg.data.hard_negatives
    chunks = -(-n // cfg.gradcache.chunk_size) + -(-n * (1 + k) // cfg.gradcache.chunk_size)
    text = (
        f"global batch {G} queries = {n} per rank x {world} ranks; {1 + k} documents per query "
        f"(1 positive + {k} hard negatives) -> {n * (1 + k)} documents per rank, "
        f"{G * (1 + k)} candidates per in-batch query"
    )
    if cfg.gradcache.enabled and cfg.gradcache.packing:
        text += f"; GradCache: packed chunks of <= {cfg.gradcache.chunk_tokens} real tokens"
    elif cfg.gradcache.enabled:
        text += f"; GradCache: {chunks} chunks of <= {cfg.gradcache.chunk_size} sequences per rank"
    return n, text


def prepare_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    run_dir = Path(cfg.run.output_dir)
    saved = run_dir / "run.yaml"
    if resume and saved.exists():
        import yaml

        before = config_from_dict(yaml.safe_load(saved.read_text())).to_dict()
        if before != cfg.to_dict():
            diff = _diff(before, cfg.to_dict())
            raise ConfigError(
                [
                    f"--resume: the config differs from {saved} in {', '.join(diff)}; resume "
                    "with the run's own config (sfr-ds train --resume --output-dir DIR)"
                ]
            )
    elif not resume and (run_dir / "checkpoints" / "latest").exists():
        raise ConfigError(
            [
                f"{run_dir} already holds checkpoints; pass --resume to continue it "
                "or choose another --output-dir"
            ]
        )
    if dist.info().is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, saved)
    dist.barrier()
    return run_dir


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _diff(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k} ({a.get(k)!r} -> {b.get(k)!r})")
    return out


def save_final(engine, tokenizer, cfg: TrainConfig, run_dir: Path) -> Path:
    """The PEFT adapter, tokenizer and how to encode with them, for mining, eval and merge."""
    out = run_dir / FINAL
    state = ds.module_state(engine)  # collective under ZeRO-3: every rank takes part
    if dist.info().is_main:
        model = engine.module.backbone
        model.save_pretrained(
            str(out),
            state_dict={n.removeprefix("backbone."): v for n, v in state.items()}
            if cfg.lora.enabled
            else None,
        )
        tokenizer.save_pretrained(str(out))
        meta = encode_meta(cfg, base_dir="../base_model" if cfg.model.random_init else None)
        (out / META).write_text(json.dumps(meta, indent=2))
    dist.barrier()
    return out


def train(
    cfg: TrainConfig, resume: bool = False, after_backward: Callable[[object, int], None] | None = None
) -> Path:
    """Run (or resume) training; ``after_backward(engine, step)`` sees each step's reduced gradients."""
    me = dist.setup(cfg.run.dist_timeout_s)
    stop = StopFlag()
    run_dir = prepare_run_dir(cfg, resume)
    per_rank, arithmetic = batch_arithmetic(cfg, me.world)
    rows = slice(me.rank * per_rank, (me.rank + 1) * per_rank)  # this rank's queries

    # ---- data: a pure plan of which records form each global step
    records = load_training_data(cfg.data.train_files, cfg.data.max_records_per_dataset)
    try:
        plan = BatchPlan(
            group_by_dataset(records),
            cfg.data.global_batch_size,
            homogeneous=cfg.data.homogeneous,
            seed=cfg.data.seed,
            weights=cfg.data.dataset_weights,
        )
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    drawer = NegativeDrawer(records, cfg.data.hard_negatives, cfg.data.short_negatives, cfg.data.seed)
    total_steps = plan.steps_per_epoch * cfg.optim.epochs
    if cfg.optim.max_steps is not None:
        total_steps = min(total_steps, cfg.optim.max_steps)
    say(
        f"{len(records)} records in {len(plan.groups)} datasets "
        f"({', '.join(f'{k}: {len(v)}' for k, v in plan.groups.items())}); {plan.steps_per_epoch} "
        f"steps per epoch, {total_steps} steps in all"
    )
    for name, n in plan.never_drawn().items():
        say(f"WARNING dataset {name!r} has {n} records, fewer than one global batch: never drawn")
    if drawer.n_short:
        say(
            f"{drawer.n_short} records have fewer than {drawer.k} negatives ({drawer.n_empty} have none): "
            f"filled by the '{drawer.policy}' policy"
        )
    say(arithmetic)

    # ---- model and engine (same initial weights on every rank)
    torch.manual_seed(cfg.run.seed)
    tokenizer = load_tokenizer(cfg.model)
    keep_base = cfg.model.random_init is not None and me.is_main
    model = build_embedder(
        cfg.model,
        cfg.lora,
        packed=cfg.gradcache.packing,
        save_base_to=str(run_dir / "base_model") if keep_base else None,
    )
    trainable, total = count_parameters(model)
    say(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.3f}%)")
    engine = ds.initialize(model, cfg, total_steps, per_rank)
    start = 0
    ckpt_root = run_dir / "checkpoints"
    tag = ds.latest_tag(ckpt_root) if resume else None
    if tag is not None:
        start = ds.load_checkpoint(engine, ckpt_root, tag)["step"]
        say(f"resumed from {ckpt_root / tag} at step {start}")
    metrics = MetricsLog(run_dir, me.is_main, cfg.run.tensorboard, start)

    # ---- steps (each one's host-side inputs made during the step before)
    make = input_maker(records, plan, drawer, rows, tokenizer, cfg)
    for step, (gb, inputs), waited in prefetched(make, range(start, total_steps)):
        t0 = time.perf_counter()
        loss_fn = infonce(to_device(inputs.positive, engine.device), inputs.allowed, cfg.loss.temperature)
        gate = StepGate(step + 1, inputs.n_tokens, stop)
        lr = ds.current_lr(engine)
        with memory_advice(cfg):
            if cfg.gradcache.enabled:
                gradcache_backward(
                    engine,
                    inputs.queries,
                    inputs.docs,
                    loss_fn,
                    cfg.gradcache.chunk_size,
                    cfg.gradcache.check_replay,
                    gate,
                    inputs.gather,
                    cfg.gradcache.chunk_tokens if cfg.gradcache.packing else None,
                )
            else:
                plain_backward(engine, inputs.queries, inputs.docs, loss_fn, gate, inputs.gather)
        row = {
            "step": step + 1,
            "loss": gate.loss / me.world,
            "lr": lr,
            "dataset": gb.dataset or "mixed",
            "grad_norm": None,
            "tokens": gate.tokens,
            "seconds": 0.0,
            "input_wait": round(waited, 4),
            "epoch": gb.epoch,
        }
        if gate.nonfinite:
            if cfg.run.on_nonfinite == "stop":
                raise FloatingPointError(
                    f"non-finite loss at step {step + 1} (dataset {row['dataset']}, "
                    f"epoch {gb.epoch}); nothing was applied. Resume from the last "
                    "checkpoint, or set run.on_nonfinite=skip to drop such steps"
                )
            ds.skip_step(engine)
            row.update(loss=None, skipped=True)
            say(f"WARNING non-finite loss at step {step + 1} (dataset {row['dataset']}): update skipped")
        else:
            if after_backward is not None:
                after_backward(engine, step + 1)
            row["grad_norm"] = ds.step(engine)
        row["seconds"] = round(waited + time.perf_counter() - t0, 4)
        metrics.log(row)
        say(
            f"step {step + 1}/{total_steps} loss {row['loss'] if row['loss'] is None else round(row['loss'], 4)} "
            f"lr {lr:.2e} grad_norm {row['grad_norm'] if row['grad_norm'] is None else round(row['grad_norm'], 4)} "
            f"dataset {row['dataset']} {row['seconds']:.2f}s"
        )
        done = step + 1 == total_steps
        if done or (step + 1) % cfg.run.save_every == 0 or gate.stop:
            ds.save_checkpoint(engine, ckpt_root, step + 1, {"step": step + 1}, cfg.run.keep_checkpoints)
        if gate.stop and not done:
            say(f"stop requested: checkpoint written at step {step + 1}; resume with --resume")
            metrics.close()
            return run_dir
    metrics.close()
    out = save_final(engine, tokenizer, cfg, run_dir)
    say(f"done: adapter in {out}")
    return run_dir
