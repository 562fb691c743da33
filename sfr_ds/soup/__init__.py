"""Model soups: several LoRA adapters over one base made into one model (``sfr-ds soup``).

Linear, exact and low-rank (``linear``). The weighted average of k merged models is
W + sum_i w_i s_i B_i A_i (the weights sum to 1), and
sum_i w_i s_i B_i A_i = [w_1 s_1 B_1 ... w_k s_k B_k] [A_1; ...; A_k].
So the soup of k adapters of ranks r_i is ONE LoRA adapter of rank sum r_i per layer: the A blocks
stacked as they are, each B block scaled by w_i * s_i, where s_i is the adapter's own scaling as peft
computes it for that layer (alpha/r, alpha/sqrt(r) with rslora, rank and alpha patterns), read from a
peft layer built on the meta device rather than recomputed here. The soup is saved with lora_alpha = r
(its own scaling is 1) and no rslora, so nothing is scaled twice. It needs no full weights, loads in
peft like any adapter, and ``sfr-ds merge`` makes it full weights.

Weights are relative: they must be > 0 and are divided by their sum (``--weights 2,1,1`` is
0.5/0.25/0.25), because only weights summing to 1 keep the base weights W once.

Slerp, two inputs, full weights (``slerp``). Each LoRA layer's deltas (peft's own merge of each
adapter into a zero weight) are interpolated on the sphere, ``slerp(t, d_1, d_2)`` (direction turned
by t times their angle, norm interpolated linearly), and added to the base weight; every other tensor
is the base's. The result is not low-rank, so it is a merged folder laid out as ``sfr-ds merge`` lays
it out (``merge.shards``, ``merge.layout``), the base streamed one tensor at a time.

Chosen by evaluation (``select``). The inputs and candidate linear soups (the uniform average, the
greedy soup, the user's weights) are scored with ``sfr-ds eval run`` and the best by the suite's AVG
is kept; its table goes into the output folder.

Inputs first (``inputs``). Each input (a run, an adapter folder, or a training checkpoint, exported
as ``sfr-ds export`` does) is checked against the first before any weight is read: the same base
model (for a random-init base, the same weights), LoRA on the same layers, the same encoding
settings. Every problem is one ``MergeError`` naming the file and field. The output is built aside
and renamed into place (``io.new_folder``); an existing non-empty ``out`` is refused.

This module puts the parts together (``soup``) and makes it a pipeline stage (``soup_stage``). No
part imports torch, transformers or peft before it needs them, so the checks come at once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..run_dir import META
from .inputs import (
    METHODS,
    SoupInput,
    check_eval_args,
    check_method,
    check_not_inside,
    check_out,
    check_weights,
    last_checkpoints,
    resolve_inputs,
)
from .linear import write_linear
from .select import TABLE, Candidate, Evaluate, selection_table, suite_evaluator
from .select import select as select_best  # not bound as ``select``: that name is the submodule
from .slerp import write_slerp


@dataclass
class SoupReport:
    out: Path
    message: str
    candidates: list[Candidate] = field(default_factory=list)


def soup(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    method: str = "linear",
    weights: Sequence[float] | None = None,
    t: float | None = None,
    eval_args: Sequence[str] | None = None,
    work: str | os.PathLike | None = None,
    dtype: str | None = None,
    max_shard_size: str | int | None = None,
    instruction: str | None = None,
    check: bool = True,
    evaluate: Evaluate | None = None,
    last: int | None = None,
) -> SoupReport:
    """Soup ``inputs`` (runs, adapter folders, checkpoints over one base) into ``out``.

    linear: one LoRA adapter of the summed rank (``weights`` relative, > 0; default uniform); with
    ``eval_args`` (e.g. ``["--suite", "mini"]``) the best of the inputs and candidate soups by the
    suite's AVG, evaluations and candidates kept in ``work`` (default ``OUT.select``) for a rerun.
    slerp: two inputs at ``t`` as full merged weights (``dtype``, ``max_shard_size``,
    ``instruction`` as for ``merge``; ``check``: the folder loads and embeds the probe texts).
    ``evaluate`` replaces ``sfr-ds eval run`` (tests). ``last``: ``inputs`` is one run, and the
    soup is of its ``last`` newest checkpoints (Qwen3-Embedding's merge of fine-tuning checkpoints)."""
    out = Path(out).expanduser().absolute()
    if last is not None:
        inputs = last_checkpoints(inputs, last)
    check_method(method, len(inputs), weights, t, eval_args)
    normalised = check_weights(weights, len(inputs)) if method == "linear" else None
    check_out(out)
    check_not_inside(out, [Path(p).expanduser().absolute() for p in inputs])
    if eval_args:
        check_eval_args(eval_args)
    selecting = bool(eval_args) or evaluate is not None
    work = Path(work).expanduser().absolute() if work else out.with_name(out.name + ".select")
    # checkpoints are exported here: kept with a selection's evaluations, else removed at the end
    scratch = work / "inputs" if selecting else out.with_name(f".{out.name}.inputs.{os.getpid()}")
    try:
        found = resolve_inputs(inputs, scratch)
        if method == "slerp":
            _, note = write_slerp(*found, t, out, dtype, max_shard_size, instruction, check)
            return SoupReport(
                out, f"slerp soup (t={t:g}) of {found[0].given} and {found[1].given} in {out}{note}"
            )
        if not selecting:
            write_linear(found, normalised, out)
            shown = ", ".join(f"{w:.3g}" for w in normalised)
            return SoupReport(out, f"linear soup of {len(found)} adapters (weights {shown}) in {out}")
        how = " ".join(eval_args or ["custom evaluation"])
        given_weights = normalised if weights is not None else None
        best, candidates = select_best(found, work, evaluate or suite_evaluator(eval_args), given_weights)
        md, js = selection_table(found, candidates, best, how)
        picked = [found[i] for i in best.members]
        extra = {"selected_by": how, "candidate": best.name, "AVG": best.avg}
        write_linear(picked, best.weights, out, extra, {f"{TABLE}.md": md, f"{TABLE}.json": js})
        return SoupReport(
            out,
            f"kept {best.name} (AVG {best.avg:.2f}) of {len(candidates)} candidates by {how} in {out} "
            f"(table: {out / (TABLE + '.md')}; evaluations in {work})",
            candidates,
        )
    finally:
        if not selecting:
            shutil.rmtree(scratch, ignore_errors=True)


def soup_done(out: str | os.PathLike) -> bool:
    """A soup folder is renamed into place whole: its sfr_ds.json means it is complete."""
    return (Path(out) / META).is_file()


def soup_stage(name: str, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *options: str):
    """A pipeline stage running ``sfr-ds soup INPUTS --out OUT OPTIONS`` (e.g. ``--select-by mini``),
    done once ``out`` holds its soup."""
    from ..pipeline import Stage, cli

    return Stage(name, Path(out), lambda: soup_done(out), cli("soup", *inputs, "--out", out, *options))


__all__ = [
    "METHODS",
    "Candidate",
    "Evaluate",
    "SoupInput",
    "SoupReport",
    "soup",
    "soup_done",
    "soup_stage",
]
