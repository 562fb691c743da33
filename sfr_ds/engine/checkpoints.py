"""Checkpoints: written by every rank then marked complete, resumed and read with ``weights_only``.

``<run>/checkpoints/step-N/`` holds DeepSpeed's shards (trainable parameters only), each rank's RNG
state and, last, ``complete.json``; ``latest`` moves to a tag only after every rank has written (rank 0
checks each rank's file is there: on several nodes the run directory must be shared), so
a crash during a save leaves it on the previous complete checkpoint (layout: ``sfr_ds.run_dir``).

Every read goes through ``torch.load(weights_only=True)``: a checkpoint is a file a user may have
been handed, and unpickling it must not run code. DeepSpeed pickles three of its own plain classes
(``ZeroStageEnum``, ``LossScaler``, and ``fragment_address`` in ZeRO-1/2 optimizer states): those
three, and only they, are allowed. DeepSpeed's own readers
ask for ``weights_only=False``; resume hands the engine a checkpoint reader that is the safe load,
and export runs DeepSpeed's ``zero_to_fp32`` with a ``torch`` whose ``load`` is the safe one.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import time
from pathlib import Path
from unittest import mock

import torch

from .. import dist
from ..io import atomic_write, atomic_write_json
from ..run_dir import COMPLETE, RunDir, RunDirError, Start
from .backend import deepspeed


class CheckpointError(RunDirError):
    """A checkpoint that cannot be read; the message says which file and what is wrong."""


def save(engine, run: RunDir, step: int, keep: int) -> str:
    """Write ``step-NNNNNNNN`` on all ranks, then mark it complete and move ``latest`` to it."""
    tag = run.tag(step)
    me = dist.info()
    if me.is_main and run.checkpoint(tag).exists():
        shutil.rmtree(run.checkpoint(tag))  # a leftover of a save that crashed before completing
    dist.barrier()
    engine.save_checkpoint(
        str(run.checkpoints),
        tag=tag,
        client_state={"step": step},
        save_latest=False,
        exclude_frozen_parameters=True,
    )
    _fault_in_save(step, me.rank)
    torch.save(rng_state(), run.checkpoint(tag) / f"rng_rank{me.rank:05d}.pt")
    dist.barrier()
    _check_every_rank_wrote(run.checkpoint(tag), me)
    if me.is_main:
        atomic_write_json(run.checkpoint(tag) / COMPLETE, {"step": step, "world": me.world}, durable=True)
        atomic_write(run.latest_file, tag, durable=True)
        _prune(run, keep)
    dist.barrier()
    return tag


RANK_FILES_WAIT_S = 60.0  # how long rank 0 looks for the other ranks' files (NFS caches listings)


def _check_every_rank_wrote(tag_dir: Path, me: dist.DistInfo) -> None:
    """Rank 0 sees every rank's RNG file (each rank's last write before the barrier), or no rank
    marks the checkpoint complete: on several nodes, a run directory that is not on a shared
    file system would otherwise give a ``latest`` that the other nodes cannot resume. Rank 0
    looks again for up to ``RANK_FILES_WAIT_S``: an NFS client may cache what a folder holds."""
    if me.is_main:
        deadline = time.monotonic() + RANK_FILES_WAIT_S
        while True:
            missing = [r for r in range(me.world) if not (tag_dir / f"rng_rank{r:05d}.pt").exists()]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    missing = dist.broadcast_object(missing if me.is_main else None)
    if missing:
        raise CheckpointError(
            f"{tag_dir}: rank(s) {missing[:8]} wrote their part of this checkpoint, but rank 0 does "
            "not see it there; the run directory must be on a file system every node shares"
        )


def _fault_in_save(step: int, rank: int) -> None:
    """``SFR_DS_FAULT_DIE_IN_SAVE=STEP:RANK`` (a testing hook): that rank SIGKILLs itself in the
    middle of step STEP's save, its DeepSpeed shard written, its RNG file not, ``complete.json``
    and ``latest`` not yet moved -- a crash during a checkpoint write, at a known point."""
    if os.environ.get("SFR_DS_FAULT_DIE_IN_SAVE") == f"{step}:{rank}":
        os.kill(os.getpid(), signal.SIGKILL)


def _prune(run: RunDir, keep: int) -> None:
    for old in run.complete_tags()[:-keep]:
        shutil.rmtree(run.checkpoint(old), ignore_errors=True)


def why_unreadable(error: Exception) -> str:
    """What stopped ``torch.load(weights_only=True)``, in one line."""
    code = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if isinstance(error, pickle.UnpicklingError) and code:
        return f"reading it would run code ({code[1]}); refused: a checkpoint holds tensors only"
    unpickler = re.search(r"WeightsUnpickler error: ([^\n]+)", str(error))
    reason = unpickler[1] if unpickler else (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    return f"cannot be read ({reason or type(error).__name__}); the file is truncated or damaged"


def load_safely(path: Path):
    """``safe_load`` memory-mapped (no tensor data is read); a file that fails so is read again
    plainly, whose error says more (mmap fails on any file that is not a whole zip archive)."""
    try:
        return safe_load(path, mmap=True)
    except Exception:
        return safe_load(path)


def unreadable(tag_dir: Path) -> str | None:
    """Why a complete checkpoint cannot be resumed from (a file truncated, damaged, or holding
    something ``weights_only`` refuses to unpickle), naming the file; None if every file reads.
    Any exception counts: it is a property of the file, and the user needs its name."""
    for path in sorted(tag_dir.glob("*.pt")) + sorted(tag_dir.glob("*/*.pt")):  # as resume reads them
        try:
            load_safely(path)
        except Exception as e:
            return f"{path}: {why_unreadable(e)}"
    return None


def readable(run: RunDir, start: Start) -> Start:
    """``start``, or the newest earlier complete checkpoint whose files all read (with a warning
    naming what was wrong); rank 0 decides, so every rank resumes from the same one."""
    if dist.info().is_main:
        tags = [t for t in run.complete_tags() if t <= start.tag] or [start.tag]
        problems, chosen = [], None
        for tag in reversed(tags):
            why = unreadable(run.checkpoint(tag))
            if why is None:
                chosen = tag
                break
            problems.append(why)
        decision = (chosen, problems)
    else:
        decision = None
    chosen, problems = dist.broadcast_object(decision)
    if chosen is None:
        raise CheckpointError("no checkpoint of this run can be resumed: " + "; ".join(problems))
    if chosen == start.tag:
        return start
    note = f"WARNING {problems[0]}; resuming from {chosen}, the newest checkpoint that reads"
    return Start(chosen, note="\n".join(filter(None, [start.note, note])))


def check_world(run: RunDir, tag: str, world: int, why: str) -> None:
    """Refuse to resume ``tag`` on another rank count, when ``why`` the run depends on it."""
    saved = json.loads((run.checkpoint(tag) / COMPLETE).read_text()).get("world", world)
    if saved != world:
        raise CheckpointError(f"{run.checkpoint(tag)} was written by {saved} ranks, not {world}: {why}")


def load(engine, run: RunDir, tag: str) -> int:
    """Restore module, optimizer, scheduler and this rank's RNG from ``tag``; returns its step."""
    engine.checkpoint_engine.load = lambda path, map_location=None: safe_load(path, map_location)
    _, state = engine.load_checkpoint(
        str(run.checkpoints),
        tag=tag,
        load_module_strict=False,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if state is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {run.checkpoint(tag)}")
    rng = run.checkpoint(tag) / f"rng_rank{dist.info().rank:05d}.pt"
    if rng.exists():
        set_rng_state(safe_load(rng))
    return int(state["step"])


def rng_state() -> dict:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- safe reading


def _deepspeed_globals() -> list:
    deepspeed()  # with the CPU settings, before any deepspeed submodule
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path, map_location="cpu", **kwargs):
    """``torch.load`` with ``weights_only=True`` and DeepSpeed's three plain classes allowed."""
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
        deepspeed()
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
