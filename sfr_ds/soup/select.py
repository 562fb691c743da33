"""Soups chosen by evaluation (``--select-by SUITE``): the inputs and candidate linear soups (uniform,
greedy, the user's weights) each scored once, the best by the suite's AVG kept, with a table of all.

Apart from the soup proper because it is about evaluation, not weights: candidates are written by
``linear.write_linear`` into a work folder keyed by what they are made of, and scored by ``sfr-ds eval
run`` as a pipeline stage (or by any ``Evaluate``, e.g. in tests), so a rerun reuses both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..merge import MergeError
from ..run_dir import META
from .inputs import SoupInput
from .linear import write_linear

TABLE = "soup_selection"  # soup_selection.md / .json in the output of a selection
Evaluate = Callable[[Path, Path], dict]  # (model folder, evaluation folder) -> {"AVG": x, group: x, ...}


@dataclass
class Candidate:
    name: str
    members: list[int]  # indices into the inputs
    weights: list[float]
    avg: float | None = None
    groups: dict = field(default_factory=dict)
    folder: Path | None = None  # the model evaluated
    eval_dir: Path | None = None


def suite_evaluator(eval_args: Sequence[str]) -> Evaluate:
    """``sfr-ds eval run MODEL --output-dir DIR EVAL_ARGS`` as a pipeline stage (an interrupted one
    skips its scored tasks), then the folder's scores by ``eval.suite.read_scores``."""

    def evaluate(model: Path, folder: Path) -> dict:
        from ..eval.suite import AVG, read_scores
        from ..pipeline import eval_stage, run_local

        try:
            run_local(
                [eval_stage(f"evaluate {model.name}", model, folder, "--no-progress", *eval_args)], "soup"
            )
        except RuntimeError as e:
            raise MergeError(f"{e} (evaluation of {model} into {folder})") from None
        scores = read_scores(folder)
        if scores.missing or scores.avg is None:
            raise MergeError(f"{folder}: no score for {scores.missing or 'any task'}; see its logs")
        return {**scores.groups, AVG: scores.avg}

    return evaluate


def candidate_key(inputs: list[SoupInput], members: list[int], weights: list[float]) -> str:
    """A short hash of what a candidate soup is made of, so a rerun reuses its folder and scores."""
    parts = sorted((inputs[i].digest, round(w, 12)) for i, w in zip(members, weights))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:10]


def keyed(parent: Path, name: str, key: str) -> Path:
    """``parent/NAME-KEY``, or the folder an earlier run made for the same key under another name
    (its inputs were given in another order)."""
    return next(iter(sorted(parent.glob(f"*-{key}"))), parent / f"{name}-{key}")


class Selection:
    """Candidates evaluated once each (the same soup under two names is scored once)."""

    def __init__(self, inputs: list[SoupInput], work: Path, evaluate: Evaluate):
        self.inputs, self.work, self.evaluate = inputs, work, evaluate
        self.scored: dict[str, Candidate] = {}
        self.candidates: list[Candidate] = []

    def score(self, name: str, members: list[int], weights: list[float]) -> Candidate:
        key = candidate_key(self.inputs, members, weights)
        if key not in self.scored:
            if len(members) == 1:  # an input is evaluated as it is
                folder = self.inputs[members[0]].adapter
            else:
                folder = keyed(self.work / "candidates", name, key)
                if not (folder / META).is_file():
                    shutil.rmtree(folder, ignore_errors=True)
                    write_linear([self.inputs[i] for i in members], weights, folder)
            eval_dir = keyed(self.work / "eval", name, key)
            scores = self.evaluate(folder, eval_dir)
            groups = {k: v for k, v in scores.items() if k != "AVG"}
            self.scored[key] = Candidate(name, members, weights, scores["AVG"], groups, folder, eval_dir)
        found = self.scored[key]
        candidate = Candidate(name, members, weights, found.avg, found.groups, found.folder, found.eval_dir)
        self.candidates.append(candidate)
        return candidate


def greedy(sel: Selection, own: list[float]) -> Candidate:
    """Inputs by their own score, best first; each added (uniform weights) only if AVG does not drop."""
    order = sorted(range(len(own)), key=lambda i: -own[i])
    members, best = [order[0]], own[order[0]]
    for i in order[1:]:
        trial = members + [i]
        avg = sel.score(f"greedy-add-{i + 1}", trial, [1 / len(trial)] * len(trial)).avg
        if avg >= best:
            members, best = trial, avg
    return sel.score("greedy", members, [1 / len(members)] * len(members))


def select(
    inputs: list[SoupInput], work: Path, evaluate: Evaluate, weights: list[float] | None = None
) -> tuple[Candidate, list[Candidate]]:
    """(the best candidate by AVG, every candidate in the order scored): each input, the uniform
    soup, the greedy soup and, when given, the user's weighted soup. Ties go to the first scored."""
    sel = Selection(inputs, work, evaluate)
    own = [sel.score(f"input-{i + 1}", [i], [1.0]).avg for i in range(len(inputs))]
    n = len(inputs)
    if n > 1:
        sel.score("uniform", list(range(n)), [1 / n] * n)
        greedy(sel, own)
        if weights is not None:
            sel.score("weighted", list(range(n)), weights)
    final = [c for c in sel.candidates if not c.name.startswith("greedy-add-")]  # not greedy's trials
    best = max(final, key=lambda c: c.avg)
    return best, sel.candidates


def selection_table(
    inputs: list[SoupInput], candidates: list[Candidate], best: Candidate, how: str
) -> tuple[str, str]:
    """(markdown, JSON) of every candidate: its inputs and weights, group scores and AVG."""
    groups = list(dict.fromkeys(g for c in candidates for g in c.groups))
    head = ["candidate", "inputs (weight)", *groups, "AVG", "kept"]
    lines = [
        f"# sfr-ds soup: candidates ({how})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for c in candidates:
        made_of = ", ".join(f"{i + 1} ({w:.3g})" for i, w in zip(c.members, c.weights))
        cells = [
            c.name,
            made_of,
            *(f"{c.groups[g]:.2f}" if g in c.groups else "–" for g in groups),
            f"{c.avg:.2f}",
        ]
        lines.append("| " + " | ".join(cells + ["**yes**" if c is best else ""]) + " |")
    lines += ["", "Inputs:", *(f"{i + 1}. {inp.given}" for i, inp in enumerate(inputs))]
    rows = [
        {
            "name": c.name,
            "inputs": [str(inputs[i].given) for i in c.members],
            "weights": c.weights,
            "groups": c.groups,
            "AVG": c.avg,
            "kept": c is best,
            "eval_dir": str(c.eval_dir),
        }
        for c in candidates
    ]
    return "\n".join(lines) + "\n", json.dumps({"selected_by": how, "candidates": rows}, indent=2) + "\n"
