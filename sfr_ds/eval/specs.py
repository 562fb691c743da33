"""Task specs: MTEB tasks by name or benchmark, and local files (``readers`` reads them, ``tasks``
makes them MTEB tasks).

A spec is one string, so a manifest (and a Slurm job) can name its tasks:

- ``SciFact``, ``STS12``: an MTEB task by name (its data loads from the hub when reachable);
  ``benchmark:NAME`` expands to the tasks of an MTEB benchmark.
- ``KIND:PATH[?key=value&...]``: local data scored by mteb's own evaluators.

  ============== ================================================ ==================
  KIND           PATH                                             main score
  ============== ================================================ ==================
  retrieval      BEIR folder (corpus.jsonl, queries.jsonl,        nDCG@10
                 qrels/SPLIT.tsv)
  sts            STS-B tsv (genre, file, year, id, score, s1, s2)  Spearman (cosine)
                 or JSONL {sentence1, sentence2, score}
  classification folder with train.csv and SPLIT.csv (text,        accuracy (logistic
                 category), or a CSV and ?train=FILE beside it    regression)
  clustering     labelled CSV, or a folder with SPLIT.csv          V-measure
  reranking      JSONL {query, positive, negative} or a TSV of     MAP@1000
                 query, candidate, label 0/1 rows (WikiQA)
  ============== ================================================ ==================

  Keys: ``name`` (task name), ``split`` (default ``test``), ``text`` and ``label`` (CSV columns,
  default ``text``/``category``), ``train`` (classification training file), ``instruction``.
  ``name``, ``split`` and ``train`` end up in file names, so each must be one plain name.

Every file is read and checked before any work (``readers.check_data``): a missing, empty or
malformed file is one ``TaskSpecError`` naming the file, line and field, never a traceback. A local
copy of a known MTEB task keeps that task's name (``KNOWN``: ``retrieval:.../scifact`` is
``SciFact``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

KINDS = {
    "retrieval": "Retrieval",
    "reranking": "Reranking",
    "sts": "STS",
    "classification": "Classification",
    "clustering": "Clustering",
}
MAIN_SCORES = {
    "retrieval": "ndcg_at_10",
    "reranking": "map_at_1000",
    "sts": "cosine_spearman",
    "classification": "accuracy",
    "clustering": "v_measure",
}
# Local folders that hold the data of an MTEB task (or, for clustering/reranking, a task named
# in the same style): (kind, folder name) -> task name.
KNOWN = {
    ("retrieval", "scifact"): "SciFact",
    ("sts", "stsbenchmark"): "STSBenchmark",
    ("classification", "banking77"): "Banking77Classification",
    ("clustering", "banking77"): "Banking77Clustering",
    ("reranking", "wikiqa"): "WikiQAReranking",
}
OPTIONS = {"name", "split", "text", "label", "train", "instruction"}
FILE_NAMES = {"name", "split", "train"}  # options that end up in a path: one plain name each


class TaskSpecError(ValueError):
    """A task spec or a local task's data that cannot be evaluated; the message names the spec or
    the file (and line, and field)."""


@dataclass(frozen=True)
class LocalSpec:
    kind: str
    path: Path
    options: dict[str, str] = field(default_factory=dict)

    @property
    def split(self) -> str:
        return self.options.get("split", "test")

    @property
    def folder_name(self) -> str:
        return (self.path if self.path.is_dir() else self.path.parent).name.lower()

    @property
    def mteb_name(self) -> str | None:
        """The MTEB task this is a local copy of, if any."""
        return self.options.get("name") or KNOWN.get((self.kind, self.folder_name))

    @property
    def name(self) -> str:
        base = self.mteb_name or f"{self.folder_name}-{self.kind}"
        return base if self.split == "test" or "name" in self.options else f"{base}.{self.split}"

    def spec(self) -> str:
        query = f"?{urlencode(sorted(self.options.items()))}" if self.options else ""
        return f"{self.kind}:{self.path}{query}"


@dataclass
class TaskEntry:
    """One task of an evaluation, as the manifest records it."""

    spec: str
    name: str
    type: str  # mteb task type: Retrieval, STS, ...
    group: str  # row of the results table: the suite's group, else the type
    data: dict | None = None  # local data: how much is scored and what was dropped (readers.Tally)

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def split_tasks(values: tuple[str, ...]) -> list[str]:
    """Specs of repeated, comma-separated ``--tasks`` values; a comma inside parentheses does not
    split, so ``benchmark:MTEB(eng, v2)`` stays whole."""
    return [s.strip() for v in values for s in re.split(r",(?![^()]*\))", v) if s.strip()]


def parse_local(spec: str) -> LocalSpec | None:
    """``KIND:PATH?k=v`` -> LocalSpec with an absolute path; an MTEB name or benchmark -> None.
    No MTEB name holds a colon, so any other ``WORD:...`` is a mistyped kind."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind == "benchmark":
        return None
    if kind not in KINDS:
        raise TaskSpecError(
            f"{spec}: unknown kind {kind!r}; KIND:PATH takes one of {sorted(KINDS)} (or benchmark:NAME)"
        )
    path, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    if unknown := set(options) - OPTIONS:
        raise TaskSpecError(f"{spec}: unknown option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
    for key in sorted(FILE_NAMES & set(options)):
        _check_file_name(spec, key, options[key])
    if not path:
        raise TaskSpecError(f"{spec}: no PATH after {kind}:")
    local = LocalSpec(kind, Path(path).expanduser().resolve(), options)
    if not local.path.exists():
        raise TaskSpecError(f"{spec}: {local.path} does not exist")
    return local


def _check_file_name(spec: str, key: str, value: str) -> None:
    """A value that becomes a file name (status/NAME.json, results, the cache, a data file) must
    stay one name inside its folder: ``?name=../../x`` would write outside the evaluation."""
    faults = (
        (not value, "is empty"),
        ("/" in value or "\\" in value, "holds a path separator"),
        (".." in value, "holds '..'"),
        (any(ord(c) < 32 or c == "\x7f" for c in value), "holds a control character"),
    )
    for fault, why in faults:
        if fault:
            raise TaskSpecError(
                f"{spec}: option {key}={value!r} {why}; it becomes a file name, so it must be one"
            )


def describe(spec: str, group: str | None = None) -> list[TaskEntry]:
    """The task(s) a spec names; only MTEB names and benchmarks import mteb."""
    local = parse_local(spec)
    if local is not None:
        return [TaskEntry(local.spec(), local.name, KINDS[local.kind], group or KINDS[local.kind])]
    import mteb

    if spec.startswith("benchmark:"):
        try:
            tasks = mteb.get_benchmark(spec.removeprefix("benchmark:")).tasks
        except KeyError:
            raise TaskSpecError(f"{spec}: no such MTEB benchmark") from None
    else:
        try:
            tasks = [mteb.get_task(spec)]
        except KeyError:
            raise TaskSpecError(
                f"{spec!r} is neither an MTEB task nor KIND:PATH with KIND in "
                f"{sorted(KINDS)} (benchmarks: benchmark:NAME)"
            ) from None
    return [
        TaskEntry(t.metadata.name, t.metadata.name, t.metadata.type, group or t.metadata.type) for t in tasks
    ]
