"""What a mining run will do, worked out and checked before any work: options, records, pools.

Everything a user gives ``sfr-ds mine`` (the settings, the training JSONL, the corpus, how the
records' positives match it) is read and checked here, without torch, FAISS or a model, so that
a mistake is one error naming the file and line in a second instead of a traceback after hours of
encoding. The teacher's own files are checked here too (``check_teacher``). ``sfr_ds.mining.mine``
then runs the plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sfr_ds.data.prepare import load_beir_corpus
from sfr_ds.data.records import OWN_NEGATIVE_TASKS, Record, RecordError, read_jsonl
from sfr_ds.mining.select import setting_problems
from sfr_ds.model_files import check_model_folder
from sfr_ds.run_dir import find_model_folder

FROM_RECORDS = "from-records"


@dataclass(frozen=True)
class MineOptions:
    range_min: int = 30  # 0-based ranks after removing positives; upper bound exclusive
    range_max: int = 100
    k: int = 7
    margin: float | None = None
    seed: int = 0
    datasets: tuple[str, ...] = ()  # empty: every record that is not labels-as-documents
    recall_at: int = 100

    def __post_init__(self):
        """Fail before the teacher spends hours encoding, naming every bad option."""
        problems = setting_problems(self.k, self.range_min, self.range_max, self.margin, self.seed)
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Pool:
    """Documents the teacher ranks for a group of records; ``ids`` None when they have none."""

    name: str
    records: list[Record]
    texts: list[str]
    ids: list[str] | None


@dataclass
class MinePlan:
    """The records (the mined ones are filled in place), their pools and, per pool, each record's
    positive rows in it; ``n_unchanged`` records pass through."""

    records: list[Record]
    pools: list[Pool]
    positives: list[list[set[int]]]
    n_unchanged: int


def corpus_file(corpus: str) -> Path | None:
    """The BEIR ``corpus.jsonl`` that ``--corpus`` names (itself or in its folder); None for
    ``from-records``."""
    if corpus == FROM_RECORDS:
        return None
    return Path(corpus) / "corpus.jsonl" if Path(corpus).is_dir() else Path(corpus)


def plan_records(records: list[Record], corpus: str, options: MineOptions) -> MinePlan:
    """The plan for ``records``: which are mined, against which pools, with which positives."""
    chosen = [
        r
        for r in records
        if r.task_type not in OWN_NEGATIVE_TASKS and (not options.datasets or r.dataset in options.datasets)
    ]
    if not chosen:
        raise ValueError(
            "no record to mine: all are labels-as-documents tasks or outside "
            f"--dataset {list(options.datasets)}"
        )
    pools = make_pools(chosen, corpus)
    return MinePlan(records, pools, [positive_rows(p) for p in pools], len(records) - len(chosen))


def plan_file(input: str | os.PathLike, corpus: str, options: MineOptions) -> MinePlan:
    return plan_records(read_jsonl(input), corpus, options)


def make_pools(records: list[Record], corpus: str) -> list[Pool]:
    """One pool for a BEIR corpus (a corpus.jsonl or its folder; empty documents left out: they
    cannot be negatives); one per dataset, in first-seen order, for ``from-records``."""
    path = corpus_file(corpus)
    if path is not None:
        docs = {i: t for i, t in load_beir_corpus(path).items() if t.strip()}
        if not docs:
            raise RecordError(f"{path}: holds no documents with text")
        return [Pool(str(path), records, list(docs.values()), list(docs))]
    by_dataset: dict[str, list[Record]] = {}
    for r in records:
        by_dataset.setdefault(r.dataset, []).append(r)
    return [
        Pool(name, group, list(dict.fromkeys(t for r in group for t in (*r.pos, *r.neg))), None)
        for name, group in by_dataset.items()
    ]


def positive_rows(pool: Pool) -> list[set[int]]:
    """Corpus rows of each record's positives: by ``pos_ids`` in a corpus with ids, else by text."""
    if pool.ids is None:
        row = {t: i for i, t in enumerate(pool.texts)}  # texts are distinct
        return [{row[t] for t in r.pos} for r in pool.records]
    row = {doc_id: i for i, doc_id in enumerate(pool.ids)}
    out, problems = [], []
    for r in pool.records:
        pos_ids = r.extra.get("pos_ids")
        unknown = [p for p in pos_ids or [] if p not in row]
        if pos_ids is None or unknown:
            problems.append(
                (f"{r.where}: " if r.where else "")
                + f"{r.dataset} query {r.extra.get('query_id', r.query[:40])!r}: "
                + ("no pos_ids" if pos_ids is None else f"pos_ids {unknown} not in the corpus")
            )
        else:
            out.append({row[p] for p in pos_ids})
    if problems:
        raise ValueError(
            f"{len(problems)} record(s) cannot be matched to {pool.name} (restrict "
            f"with --dataset, or use --corpus {FROM_RECORDS}); first: {problems[0]}"
        )
    return out


def self_teacher_folder(spec: str, pooling: str = "auto") -> tuple[Path, dict]:
    """The model folder of ``self:RUN`` and its metadata, once every file of it (and of a random-init
    base) is readable (``model_files``); such a teacher encodes with its run's pooling only."""
    folder = find_model_folder(spec.removeprefix("self:"))
    meta = check_model_folder(folder)
    if pooling not in ("auto", meta["pooling"]):
        raise ValueError(f"{folder} was trained with {meta['pooling']} pooling; drop --pooling")
    return folder, meta


def check_teacher(spec: str, pooling: str = "auto") -> None:
    """What can be known of a teacher without loading it: a run's folder whole, a model path present."""
    if spec.startswith("self:"):
        self_teacher_folder(spec, pooling)
    elif spec.startswith(("/", ".", "~")) and not Path(spec).expanduser().is_dir():
        raise FileNotFoundError(f"teacher {spec!r}: no such model folder")
