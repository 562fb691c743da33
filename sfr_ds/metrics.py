"""Per-step metrics: one JSON object per line in ``metrics.jsonl`` and TensorBoard events (rank 0).

A row holds ``step``, ``loss`` (the global mean), ``lr``, ``dataset`` (``mixed`` when batches are
not task-homogeneous), ``grad_norm`` (before clipping), ``tokens`` (real tokens of the global
batch), ``seconds`` (the whole step, input wait included), ``input_wait`` (how long the step waited
for its host-side inputs) and ``epoch``; a step skipped for a non-finite loss has ``loss`` and
``grad_norm`` null and ``skipped`` true. With ``loss.false_negative_margin`` set, a row also has
``false_negatives_masked``: the candidates the false-negative mask removed, summed over ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_write


def step_row(step: int, loss: float | None, lr: float, dataset: str | None, tokens: int, epoch: int) -> dict:
    """A step's row before its optimizer step and timing are known."""
    return {
        "step": step,
        "loss": loss,
        "lr": lr,
        "dataset": dataset or "mixed",
        "grad_norm": None,
        "tokens": tokens,
        "seconds": 0.0,
        "input_wait": 0.0,
        "epoch": epoch,
    }


def log_line(row: dict, total_steps: int) -> str:
    """The row as the line the run prints."""

    def num(x, digits=4):
        return None if x is None else round(x, digits)

    return (
        f"step {row['step']}/{total_steps} loss {num(row['loss'])} lr {row['lr']:.2e} "
        f"grad_norm {num(row['grad_norm'])} dataset {row['dataset']} {row['seconds']:.2f}s"
    )


def _step(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill counts as after any resume point."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


class MetricsLog:
    def __init__(self, path: Path, tensorboard: Path | None, enabled: bool, resume_step: int):
        """Append to ``path`` (TensorBoard events under ``tensorboard`` if given), after dropping
        the lines of steps a resume from ``resume_step`` will redo. Only rank 0 is ``enabled``."""
        self.enabled, self.path, self.tb = enabled, path, None
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resume_step]
            atomic_write(self.path, "".join(line + "\n" for line in kept))
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tensorboard), purge_step=resume_step + 1)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
