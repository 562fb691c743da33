"""How many false negatives each mining policy lets through, measured where the truth is known.

Labelled data (classification): each example is a query over all the examples, with one other
example of its class as its only known positive (the ``--format examples`` record); a mined
negative with the query's label is a false negative, exactly. Retrieval data with several
positives per query: one positive is hidden from the miner, and we count how often it comes back
as a mined negative (a lower bound: only the hidden positive is known to be one).

Every policy draws from the same teacher ranking (one search per teacher and dataset) through
``select_negatives``, the code ``sfr-ds mine`` runs, so the table measures the real policies.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from sfr_ds.data.records import Record
from sfr_ds.mining.select import Cap, retrieval_depth, select_negatives
from sfr_ds.mining.teachers import Teacher


@dataclass(frozen=True)
class Policy:
    name: str
    range_min: int
    range_max: int
    cap: Cap | None = None

    def flags(self) -> str:
        cap = f" --cap {self.cap}" if self.cap else ""
        return f"--range {self.range_min} {self.range_max}{cap}"


def policies(k: int) -> list[Policy]:
    """The four policies of issue 18: naive top-k, the SFR window, the NV-Retriever cap, both."""
    cap = Cap("relative", 0.95)
    return [
        Policy("naive top-k", 0, k),
        Policy("window", 30, 100),
        Policy("cap", 0, 100, cap),
        Policy("window + cap", 30, 100, cap),
    ]


@dataclass
class Task:
    """Queries over a corpus, what the miner is told, and how to judge a mined negative."""

    name: str
    queries: list[str]
    instructions: list[str]
    corpus: list[str]
    told: list[set[int]]  # corpus rows the miner removes as positives
    is_false: list[set[int]]  # corpus rows that are false negatives for the query
    measure: str  # what the rate counts


@dataclass
class Row:
    teacher: str
    task: str
    policy: Policy
    n_queries: int
    n_negatives: int
    n_false: int
    n_hit_queries: int  # queries with at least one false negative
    measure: str

    def rate(self) -> float:
        return self.n_false / max(1, self.n_negatives)


def labelled_task(records: Sequence[Record], seed: int = 0) -> Task:
    """Each example against all the examples; told only of itself and one same-label example.
    Examples whose label has no other example are left out (no positive to give)."""
    texts = [r.query for r in records]
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_label.setdefault(_label(r), []).append(i)
    rng = random.Random(seed)
    queries, told, false = [], [], []
    for i, r in enumerate(records):
        same = [j for j in by_label[_label(r)] if j != i]
        if not same:
            continue
        queries.append(i)
        told.append({i, rng.choice(same)})
        false.append(set(by_label[_label(r)]) - told[-1])
    if not queries:
        raise ValueError("no label has two examples: nothing to audit on the labelled data")
    name = f"{records[0].dataset} (labelled: exact)"
    return Task(name, [texts[i] for i in queries], [""] * len(queries), texts, told, false, "label")


def hidden_positive_task(records: Sequence[Record], seed: int = 0) -> Task:
    """Queries with 2+ positives over every pos/neg text of the records; one positive hidden."""
    corpus = list(dict.fromkeys(t for r in records for t in (*r.pos, *r.neg)))
    row = {t: i for i, t in enumerate(corpus)}
    rng = random.Random(seed)
    chosen = [r for r in records if len(set(r.pos)) > 1]
    if not chosen:
        raise ValueError("no retrieval record has two positives: nothing to hide from the miner")
    told, false = [], []
    for r in chosen:
        pos = sorted({row[t] for t in r.pos})
        hidden = rng.choice(pos)
        told.append(set(pos) - {hidden})
        false.append({hidden})
    name = f"{records[0].dataset} (hidden positive)"
    queries, instructions = [r.query for r in chosen], [r.instruction for r in chosen]
    return Task(name, queries, instructions, corpus, told, false, "hidden")


def _label(r: Record) -> str:
    return str(r.extra.get("label", r.pos[0]))


def audit(task: Task, teacher: Teacher, k: int, seed: int = 0) -> list[Row] | None:
    """One teacher ranking of the task, every policy applied to it; None on ranks other than 0."""
    depth = retrieval_depth(100, task.told)
    ranking = teacher.rank(task.queries, task.instructions, task.corpus, task.told, depth)
    if ranking is None:
        return None
    pos_texts = [[task.corpus[j] for j in sorted(t)] for t in task.told]
    rows = []
    for policy in policies(k):
        picks, _ = select_negatives(
            ranking.ids,
            ranking.scores,
            task.told,
            task.corpus,
            pos_texts,
            k,
            query_keys=list(range(len(task.queries))),
            range_min=policy.range_min,
            range_max=policy.range_max,
            margin=policy.cap,
            seed=seed,
            positive_scores=ranking.positive_scores,
        )
        false = [sum(c["id"] in bad for c in chosen) for chosen, bad in zip(picks, task.is_false)]
        n_neg = sum(len(c) for c in picks)
        rows.append(
            Row(
                teacher.name,
                task.name,
                policy,
                len(picks),
                n_neg,
                sum(false),
                sum(f > 0 for f in false),
                task.measure,
            )
        )
    return rows


def table(rows: list[Row], k: int) -> str:
    """The markdown table, one line per (teacher, data, policy)."""
    out = [
        f"| teacher | data | policy (`sfr-ds mine` flags, k={k}) | queries | negatives | "
        "false negatives | rate | queries hit |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.teacher} | {r.task} | {r.policy.name}: `{r.policy.flags()}` | {r.n_queries} | "
            f"{r.n_negatives} | {r.n_false} | {100 * r.rate():.1f}% | {r.n_hit_queries} |"
        )
    return "\n".join(out)
