"""The mining pipeline: training records in, the same records with teacher-mined negatives out.

Records of labels-as-documents tasks (classification, clustering) already hold their negatives
(the other labels) and pass through unchanged, as do records outside ``datasets`` when it is
given. The others are ranked by the teacher against a corpus, either a BEIR ``corpus.jsonl``
(positives dropped by ``pos_ids``) or ``from-records`` (each dataset's own pos/neg texts, so a
query only meets documents of its own task); positives are always dropped by identical text too.
Runs on every rank (dense teachers encode in shards); only rank 0 gets the result and writes it.
What is mined against what is worked out and checked first, without a model (``plan``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sfr_ds import dist
from sfr_ds.data.records import Record, check_record, write_jsonl
from sfr_ds.mining.plan import (
    FROM_RECORDS,
    MineOptions,
    MinePlan,
    Pool,
    make_pools,
    plan_file,
    plan_records,
    positive_rows,
)
from sfr_ds.mining.select import SelectReport, as_cap, retrieval_depth, select_negatives
from sfr_ds.mining.teachers import Ranking, Teacher

__all__ = ["FROM_RECORDS", "MineOptions", "MineReport", "Pool", "make_pools", "mine_file", "positive_rows"]
NEG_FIELDS = ("neg_ids", "neg_ranks", "neg_scores")
DEFAULTS = MineOptions()


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
                f"cap {as_cap(o.margin) or 'none'}, seed {o.seed}"
            )
        ]
        for g in self.groups:
            s = g.select
            lines.append(
                f"{g.name}: {g.n_queries} queries over {g.n_docs:,} docs; recall@{o.recall_at} "
                f"{g.recall:.4f}; {s.n_short} queries with fewer than {o.k} negatives "
                f"({s.n_empty} with none); dropped as positive: {s.dropped_as_positive_id} by id, "
                f"{s.dropped_as_positive_text} by text; above the window: {s.above_window}; "
                f"dropped by the cap: {s.dropped_by_margin}"
                + (f" ({s.n_margin_skipped} queries without a positive score)" if s.n_margin_skipped else "")
            )
        lines.append(f"{self.n_unchanged} records passed through unchanged")
        return "\n".join(lines)


def mine_file(
    input: str | os.PathLike,
    corpus: str,
    teacher: Teacher,
    out: str | os.PathLike,
    options: MineOptions = DEFAULTS,
) -> MineReport | None:
    """Read, mine and (on rank 0) write the training JSONL; the report on rank 0, else None."""
    plan = plan_file(input, corpus, options)
    report = mine_plan(plan, teacher, options)
    if report is not None:
        write_mined(plan.records, out)
    return report


def write_mined(records: list[Record], out: str | os.PathLike) -> None:
    """Check every mined record as training will, then write them atomically."""
    for n, r in enumerate(records, 1):
        check_record(r.to_json(), f"{out}: record {n}")
    write_jsonl(records, out)


def mine_records(
    records: list[Record], corpus: str, teacher: Teacher, options: MineOptions = DEFAULTS
) -> MineReport | None:
    """Fill ``neg`` (and ``neg_ids``/``neg_ranks``/``neg_scores``) of the selected records in place."""
    return mine_plan(plan_records(records, corpus, options), teacher, options)


def mine_plan(plan: MinePlan, teacher: Teacher, options: MineOptions) -> MineReport | None:
    """Run a checked plan (``plan.plan_file``): every pool ranked by the teacher, negatives drawn."""
    report = MineReport(teacher.name, options, n_unchanged=plan.n_unchanged)
    for pool, positives in zip(plan.pools, plan.positives):
        group = _mine_pool(pool, positives, teacher, options)
        if group is not None:
            report.groups.append(group)
    return report if dist.info().is_main else None


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


def _mine_pool(
    pool: Pool, positives: list[set[int]], teacher: Teacher, options: MineOptions
) -> GroupReport | None:
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
