"""The mining pipeline: training records in, the same records with teacher-mined negatives out.

Records of labels-as-documents tasks (classification, clustering) already hold their negatives
(the other labels) and pass through unchanged, as do records outside ``datasets`` when it is
given. The others are ranked by the teacher against a corpus, either a BEIR ``corpus.jsonl``
(positives dropped by ``pos_ids``) or ``from-records`` (each dataset's own pos/neg texts, so a
query only meets documents of its own task); positives are always dropped by identical text too.
Runs on every rank (dense teachers encode in shards); only rank 0 gets the result and writes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sfr_ds import dist
from sfr_ds.data.prepare import load_beir_corpus
from sfr_ds.data.records import OWN_NEGATIVE_TASKS, Record, check_record, read_jsonl, write_jsonl
from sfr_ds.mining.select import SelectReport, retrieval_depth, select_negatives, setting_problems
from sfr_ds.mining.teachers import Ranking, Teacher

FROM_RECORDS = "from-records"
NEG_FIELDS = ("neg_ids", "neg_ranks", "neg_scores")


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
class GroupReport:
    name: str
    n_queries: int
    n_docs: int
    recall: float  # mean over queries of the share of positives in the raw top ``recall_at``
    select: SelectReport


@dataclass
class MineReport:
    teacher: str
    options: MineOptions
    groups: list[GroupReport] = field(default_factory=list)
    n_unchanged: int = 0

    def __str__(self) -> str:
        o = self.options
        lines = [
            (
                f"teacher {self.teacher}; window [{o.range_min}, {o.range_max}), k={o.k}, "
                f"margin {o.margin}, seed {o.seed}"
            )
        ]
        for g in self.groups:
            s = g.select
            lines.append(
                f"{g.name}: {g.n_queries} queries over {g.n_docs:,} docs; recall@{o.recall_at} "
                f"{g.recall:.4f}; {s.n_short} queries with fewer than {o.k} negatives "
                f"({s.n_empty} with none); dropped as positive: {s.dropped_as_positive_id} by id, "
                f"{s.dropped_as_positive_text} by text; dropped by margin: {s.dropped_by_margin}"
            )
        lines.append(f"{self.n_unchanged} records passed through unchanged")
        return "\n".join(lines)


def mine_file(
    input: str | os.PathLike,
    corpus: str,
    teacher: Teacher,
    out: str | os.PathLike,
    options: MineOptions = MineOptions(),
) -> MineReport | None:
    """Read, mine and (on rank 0) write the training JSONL; the report on rank 0, else None."""
    records = read_jsonl(input)
    report = mine_records(records, corpus, teacher, options)
    if report is not None:
        for n, r in enumerate(records, 1):
            check_record(r.to_json(), f"{out}: record {n}")
        write_jsonl(records, out)
    return report


def mine_records(
    records: list[Record], corpus: str, teacher: Teacher, options: MineOptions = MineOptions()
) -> MineReport | None:
    """Fill ``neg`` (and ``neg_ids``/``neg_ranks``/``neg_scores``) of the selected records in place."""
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
    report = MineReport(teacher.name, options, n_unchanged=len(records) - len(chosen))
    for pool in make_pools(chosen, corpus):
        group = _mine_pool(pool, teacher, options)
        if group is not None:
            report.groups.append(group)
    return report if dist.info().is_main else None


def make_pools(records: list[Record], corpus: str) -> list[Pool]:
    """One pool for a BEIR corpus (a corpus.jsonl or its folder; empty documents left out: they
    cannot be negatives); one per dataset, in first-seen order, for ``from-records``."""
    if corpus != FROM_RECORDS:
        path = Path(corpus) / "corpus.jsonl" if Path(corpus).is_dir() else Path(corpus)
        docs = {i: t for i, t in load_beir_corpus(path).items() if t.strip()}
        return [Pool(path.name, records, list(docs.values()), list(docs))]
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
                f"{r.dataset} query {r.extra.get('query_id', r.query[:40])!r}: "
                + ("no pos_ids" if pos_ids is None else f"pos_ids {unknown} not in corpus")
            )
        else:
            out.append({row[p] for p in pos_ids})
    if problems:
        raise ValueError(
            f"{len(problems)} record(s) cannot be matched to {pool.name} (restrict "
            f"with --dataset, or use --corpus {FROM_RECORDS}); first: {problems[0]}"
        )
    return out


def recall(ranking: Ranking, positives: Sequence[set[int]], at: int) -> float:
    """Mean over queries of the share of its positives among the teacher's top ``at``."""
    shares = [len(set(row[:at].tolist()) & pos) / len(pos) for row, pos in zip(ranking.ids, positives)]
    return sum(shares) / len(shares)


def without_query_copies(ids: np.ndarray, pool: Pool) -> np.ndarray:
    """``ids`` with documents that read exactly like their query set to -1 (absent): an STS
    pool holds the queries themselves, and a copy of the query is no negative."""
    queries = {r.query.strip() for r in pool.records}
    copies: dict[str, list[int]] = {}
    for row, text in enumerate(pool.texts):
        if text.strip() in queries:
            copies.setdefault(text.strip(), []).append(row)
    out = ids.copy()
    for i, r in enumerate(pool.records):
        if r.query.strip() in copies:
            out[i][np.isin(out[i], copies[r.query.strip()])] = -1
    return out


def _mine_pool(pool: Pool, teacher: Teacher, options: MineOptions) -> GroupReport | None:
    positives = positive_rows(pool)
    depth = max(retrieval_depth(options.range_max, positives), options.recall_at)
    ranking = teacher.rank(
        [r.query for r in pool.records], [r.instruction for r in pool.records], pool.texts, positives, depth
    )
    if ranking is None:  # not rank 0
        return None
    candidates = without_query_copies(ranking.ids, pool)
    picks, select = select_negatives(
        candidates,
        ranking.scores,
        positives,
        pool.texts,
        [r.pos for r in pool.records],
        options.k,
        query_keys=[r.extra.get("query_id", r.query) for r in pool.records],
        range_min=options.range_min,
        range_max=options.range_max,
        margin=options.margin,
        seed=options.seed,
        positive_scores=ranking.positive_scores,
    )
    for record, chosen in zip(pool.records, picks):
        _fill(record, chosen, pool)
    return GroupReport(
        pool.name, len(pool.records), len(pool.texts), recall(ranking, positives, options.recall_at), select
    )


def _fill(record: Record, chosen: list[dict], pool: Pool) -> None:
    """Replace the record's negatives and their audit fields (stale ones would misalign)."""
    for name in NEG_FIELDS:
        record.extra.pop(name, None)
    record.neg = [pool.texts[c["id"]] for c in chosen]
    if pool.ids is not None:
        record.extra["neg_ids"] = [pool.ids[c["id"]] for c in chosen]
    record.extra["neg_ranks"] = [c["rank"] for c in chosen]
    record.extra["neg_scores"] = [round(float(c["score"]), 6) for c in chosen]
