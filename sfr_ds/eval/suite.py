"""Named task suites and the result tables, laid out like the seed's (groups as rows, AVG last).

The ``dev`` suite is the seed's dev report on data that runs offline: one local task per group,
none of them used by the bundled training data. Its groups are reported as Clustering_dev,
Reranking_dev, Retrieval_dev and STS_dev, and AVG is the mean of the four group scores (as the
seed's AVG is). A group's score is the mean of its tasks' main scores, times 100.

The ``mini`` suite is the same report on the small held-out subsets bundled with the package
(``sfr_ds/resources/data/eval``, see its PROVENANCE.md): no data root needed, minutes on a CPU; the
demo and the ablations use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write, check_output
from .runner import (
    Manifest,
    counted,
    data_lines,
    embedding_width,
    is_done,
    main_score,
    read_json,
    run_tasks,
    truncated_dims,
)
from .specs import TaskEntry, describe, split_tasks

SUITES: dict[str, dict[str, list[str]]] = {
    "dev": {
        "Clustering_dev": ["clustering:{data}/banking77/test.csv"],
        "Reranking_dev": ["reranking:{data}/wikiqa/WikiQA-test.txt"],
        "Retrieval_dev": ["retrieval:{data}/scifact"],
        "STS_dev": ["sts:{data}/stsbenchmark/sts-dev.csv?split=dev"],
    },
    "mini": {
        "Clustering_dev": ["clustering:{bundled}/banking77/clustering.csv?name=Banking77Clustering-mini"],
        "Reranking_dev": ["reranking:{bundled}/pubmedqa/rerank.jsonl?name=PubMedQA-mini"],
        "Retrieval_dev": ["retrieval:{bundled}/scifact?name=SciFact-mini"],
        "STS_dev": ["sts:{bundled}/stsbenchmark/sts-test.csv?name=STSBenchmark-mini"],
    },
}
BUNDLED = Path(__file__).resolve().parents[1] / "resources" / "data" / "eval"
AVG = "AVG"


def suite_specs(name: str, data_root: str | None) -> list[tuple[str, str]]:
    """(group, task spec) pairs of a named suite, its paths under ``data_root`` (or $SFR_DS_DATA)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {sorted(SUITES)}")
    if not any("{data}" in spec for specs in SUITES[name].values() for spec in specs):
        return [
            (group, spec.format(bundled=BUNDLED)) for group, specs in SUITES[name].items() for spec in specs
        ]
    root = data_root or os.environ.get("SFR_DS_DATA")
    if not root:
        raise ValueError(f"suite {name!r} reads local data: pass --data-root DIR or set SFR_DS_DATA")
    root = str(Path(root).expanduser().resolve())
    return [(group, spec.format(data=root)) for group, specs in SUITES[name].items() for spec in specs]


def requested_entries(
    task_values: tuple[str, ...], suite: str | None, data_root: str | None
) -> list[TaskEntry]:
    """The tasks ``--tasks`` (repeated, comma-separated) and ``--suite`` name, in that order; empty
    when they name none."""
    pairs = [(None, spec) for spec in split_tasks(task_values)]
    if suite:
        pairs += suite_specs(suite, data_root)
    return [entry for group, spec in pairs for entry in describe(spec, group)]


@dataclass
class Scores:
    """One evaluated model: main scores (x100) per task and per group, in manifest order."""

    label: str
    tasks: dict[str, float]
    groups: dict[str, float]
    missing: list[str]

    @property
    def avg(self) -> float | None:
        return sum(self.groups.values()) / len(self.groups) if self.groups else None


def read_scores(out: Path, dim: int | None = None) -> Scores:
    """The folder's scores, at its model's full width or at the first ``dim`` dimensions (one of
    the widths it was evaluated at; a width the model does not exceed is its full width)."""
    manifest = Manifest.load(out)
    width = embedding_width(out)
    if dim is not None and (width is None or dim < width) and dim not in manifest.dims:
        evaluated = manifest.dims or "full only"
        raise ValueError(f"{out} was not evaluated at {dim} dimensions (its widths: {evaluated})")
    at = dim if dim is not None and (width is None or dim < width) else None
    tasks, by_group, missing = {}, {}, []
    for entry in manifest.tasks:
        if is_done(out, manifest, entry.name, [at]):
            tasks[entry.name] = 100 * main_score(manifest.result_path(out, entry.name, at))
            by_group.setdefault(entry.group, []).append(tasks[entry.name])
        else:
            missing.append(entry.name)
    groups = {g: sum(v) / len(v) for g, v in by_group.items()}
    return Scores(manifest.label, tasks, groups, missing)


def widths(out: Path) -> list[int | None]:
    """The widths a folder was scored at: None (full) and every narrower one of its ``dims``."""
    return [None, *truncated_dims(out, Manifest.load(out))]


def width_table(folders: list[Path], labels: list[str]) -> str:
    """``by_width`` of evaluation folders, or "" when none was scored at a narrower width."""
    at = [{d: read_scores(f, d) for d in widths(f)} for f in folders]
    if all(len(a) == 1 for a in at):
        return ""
    return by_width(list(zip(labels, at)), embedding_width(folders[0]))


def by_width(scores: list[tuple[str, dict[int | None, Scores]]], full: int | None) -> str:
    """Matryoshka table: AVG at each width as rows, then each width's share of the full-width AVG
    (%), one column per model (``scores``: label -> width -> Scores; None is the full width)."""
    dims = sorted({d for _, at in scores for d in at if d is not None}, reverse=True)
    full_name = f"AVG full ({full})" if full else "AVG full"
    rows = [full_name] + [f"AVG {d}" for d in dims] + [f"% of full at {d}" for d in dims]
    values = []
    for _, at in scores:
        top = at[None].avg
        v = {full_name: top}
        for d in dims:
            avg = at[d].avg if d in at else None
            v[f"AVG {d}"] = avg
            v[f"% of full at {d}"] = None if avg is None or not top else 100 * avg / top
        values.append(v)
    return table(rows, [label for label, _ in scores], values, "Width")


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def table(rows: list[str], columns: list[str], values: list[dict[str, float | None]], first: str) -> str:
    """Markdown: one row per name, one column per model, then Δ of each model against the first."""
    deltas = [f"Δ {c}" for c in columns[1:]]
    lines = [
        f"| {first} | " + " | ".join(columns + deltas) + " |",
        "|" + "---|" * (1 + len(columns) + len(deltas)),
    ]
    for row in rows:
        cells = [v.get(row) for v in values]
        diffs = [None if c is None or cells[0] is None else c - cells[0] for c in cells[1:]]
        lines.append(
            f"| {row} | "
            + " | ".join([_fmt(c) for c in cells] + [_fmt(d, signed=True) for d in diffs])
            + " |"
        )
    return "\n".join(lines)


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def compare(scores: list[Scores], columns: list[str] | None = None) -> str:
    """The seed's layout: groups and AVG as rows, models as columns, then per-task rows."""
    columns = columns or labels(scores)
    groups = _unique([g for s in scores for g in s.groups])
    group_values = [{**s.groups, AVG: s.avg} for s in scores]
    tasks = _unique([t for s in scores for t in s.tasks] + [t for s in scores for t in s.missing])
    text = [
        table(groups + [AVG], columns, group_values, "Metric"),
        "",
        table(tasks, columns, [s.tasks for s in scores], "Task"),
    ]
    for s, column in zip(scores, columns):
        if s.missing:
            text += ["", f"{column}: no result yet for {', '.join(s.missing)}"]
    return "\n".join(text) + "\n"


def check_table_output(output: Path, inputs: list[str], folders: list[Path], overwrite: bool = False) -> None:
    """Where ``compare --output`` may write: never over one of its inputs nor into a compared
    evaluation folder (even with --overwrite), and over another existing file only with it."""
    check_output(output, inputs, overwrite, folders)


def labels(scores: list[Scores]) -> list[str]:
    """Column names; repeated labels get a suffix so columns stay distinct."""
    labels = [s.label for s in scores]
    return [f"{lb} ({i + 1})" if labels.count(lb) > 1 else lb for i, lb in enumerate(labels)]


def evaluate(out: Path, indices: list[int], progress: bool = True) -> list[str]:
    """Run the tasks here, then write the folder's summary; the names of the tasks that failed."""
    failed = run_tasks(out, indices, progress=progress)
    write_summary(out)
    return failed


def write_summary(out: Path) -> Scores:
    """``summary.md`` (the table) and ``summary.json`` (the numbers) next to mteb's results."""
    scores = read_scores(out)
    settings_file = out / "model_settings.json"
    header = [f"# sfr-ds eval: {scores.label}", ""]
    if settings_file.exists():
        settings = read_json(settings_file)
        header += ["Model: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    text = "\n".join(header) + compare([scores])
    data = {
        "label": scores.label,
        "tasks": scores.tasks,
        "groups": scores.groups,
        AVG: scores.avg,
        "missing": scores.missing,
    }
    if lines := data_lines(counted(out, Manifest.load(out))):
        text += "\n## Data scored\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    if narrower := [d for d in widths(out) if d is not None]:
        at = {d: read_scores(out, d) for d in narrower}
        columns = [f"full ({embedding_width(out)})"] + [f"{d} dims" for d in narrower]
        text += "\n## By embedding width (Matryoshka)\n\n" + compare([scores, *at.values()], columns)
        data["dims"] = {str(d): {"tasks": v.tasks, "groups": v.groups, AVG: v.avg} for d, v in at.items()}
    atomic_write(out / "summary.md", text)
    atomic_write(out / "summary.json", json.dumps(data, indent=2))
    return scores
