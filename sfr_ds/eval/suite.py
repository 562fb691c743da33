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
from .runner import Manifest, is_done, main_score, read_json, run_tasks
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


def read_scores(out: Path) -> Scores:
    manifest = Manifest.load(out)
    tasks, by_group, missing = {}, {}, []
    for entry in manifest.tasks:
        if is_done(out, manifest, entry.name):
            tasks[entry.name] = 100 * main_score(manifest.result_path(out, entry.name))
            by_group.setdefault(entry.group, []).append(tasks[entry.name])
        else:
            missing.append(entry.name)
    groups = {g: sum(v) / len(v) for g, v in by_group.items()}
    return Scores(manifest.label, tasks, groups, missing)


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


def compare(scores: list[Scores]) -> str:
    """The seed's layout: groups and AVG as rows, models as columns, then per-task rows."""
    columns = _labels(scores)
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


def _labels(scores: list[Scores]) -> list[str]:
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
    atomic_write(out / "summary.md", "\n".join(header) + compare([scores]))
    atomic_write(
        out / "summary.json",
        json.dumps(
            {
                "label": scores.label,
                "tasks": scores.tasks,
                "groups": scores.groups,
                AVG: scores.avg,
                "missing": scores.missing,
            },
            indent=2,
        ),
    )
    return scores
