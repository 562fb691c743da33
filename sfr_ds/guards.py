"""What can stop or spoil a training step: preemption signals, a non-finite loss, running out of memory."""

from __future__ import annotations

import math
import os
import signal
from contextlib import contextmanager

import torch

from . import dist
from .config import TrainConfig


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (Slurm's preemption and pre-timeout signals); every rank checks the
    OR of all flags at each step boundary, so all stop after the same step."""

    def __init__(self):
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.raised = True


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
                "with it: per-token figures in docs/benchmarks.md)"
            )
        else:
            fix = f"a smaller gradcache.chunk_size (now {g.chunk_size}), or gradcache.packing=true"
        if not cfg.model.gradient_checkpointing:
            fix += ", or model.gradient_checkpointing=true (slower: one more forward)"
        raise type(e)(f"out of memory in a training step; set {fix}. The error was: {e}") from e
