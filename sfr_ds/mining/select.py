"""Choose hard negatives from a teacher's ranked candidates.

The top of a teacher's ranking holds unlabelled positives (false negatives) and the bottom holds
easy negatives, so negatives come from a rank window (the SFR seed: 30-100), with positives and,
optionally, candidates scoring too close to the positive removed, then k drawn per query.

The cap is NV-Retriever's positive-aware filter (Moreira et al., 2024): ``relative:0.95`` drops a
candidate scoring >= 0.95 x the positive's score (TopK-PercPos), ``absolute:0.05`` one scoring
>= the positive's score - 0.05 (TopK-MarginPos). One policy: positives out, then the window, then
the cap on what the window kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CAP_KINDS = ("relative", "absolute")


@dataclass(frozen=True)
class Cap:
    """A positive-aware cap: drop candidates whose teacher score reaches ``limit(positive score)``."""

    kind: str  # relative: value x positive; absolute: positive - value
    value: float

    @classmethod
    def parse(cls, text: str) -> Cap:
        """``relative:0.95`` or ``absolute:0.05``; a ValueError saying what is expected."""
        kind, _, number = text.partition(":")
        try:
            cap = cls(kind.strip(), float(number))
        except ValueError:
            expected = "relative:ALPHA or absolute:MARGIN (e.g. relative:0.95)"
            raise ValueError(f"expected {expected}, got {text!r}") from None
        if problems := cap.problems():
            raise ValueError(f"{text!r}: " + "; ".join(problems))
        return cap

    def problems(self) -> list[str]:
        if self.kind not in CAP_KINDS:
            return [f"the cap's kind must be relative or absolute, got {self.kind!r}"]
        if not np.isfinite(self.value):
            return [f"the cap's value must be a finite number, got {self.value}"]
        if self.kind == "relative" and self.value <= 0:
            return [f"a relative cap must be > 0 (e.g. 0.95), got {self.value}"]
        if self.kind == "absolute" and self.value < 0:
            return [f"an absolute cap must be >= 0 (e.g. 0.05), got {self.value}"]
        return []

    def limit(self, reference: float) -> float:
        """Candidates scoring at or above this are dropped."""
        return self.value * reference if self.kind == "relative" else reference - self.value

    def __str__(self) -> str:
        return f"{self.kind}:{self.value!r}"  # parses back to the same cap (--nproc-per-node)


def as_cap(margin: float | Cap | None) -> Cap | None:
    """``--margin X`` (a bare number) is the relative cap X."""
    return margin if margin is None or isinstance(margin, Cap) else Cap("relative", float(margin))


@dataclass
class SelectReport:
    """Counts for the mining log, one per rule: positives by id and by text over the whole
    retrieved list; ``above_window`` the non-positive candidates ranked above the window;
    ``dropped_by_margin`` (the cap) only candidates the window kept (the rest are never used)."""

    n_queries: int = 0
    n_short: int = 0  # queries that got fewer than k negatives (empty ones included)
    n_empty: int = 0  # queries that got none
    dropped_as_positive_id: int = 0
    dropped_as_positive_text: int = 0  # another id whose stripped text equals a positive's
    above_window: int = 0
    dropped_by_margin: int = 0  # by the cap (--cap, or --margin: a relative cap)
    n_margin_skipped: int = 0  # a cap set but no positive score known for the query


def retrieval_depth(range_max: int, positives: Sequence[set[int]]) -> int:
    """How deep to search so the window stays full once every positive id is removed."""
    return range_max + max((len(p) for p in positives), default=0)


def select_negatives(
    ranked_ids: np.ndarray,
    ranked_scores: np.ndarray,
    positives: Sequence[set[int]],
    doc_texts: Sequence[str],
    pos_texts: Sequence[Sequence[str]],
    k: int,
    *,
    query_keys: Sequence[str | int],
    range_min: int = 30,
    range_max: int = 100,
    margin: float | Cap | None = None,
    seed: int = 0,
    positive_scores: Sequence[float | None] | None = None,
) -> tuple[list[list[dict]], SelectReport]:
    """Per query, up to k negatives ``{"id", "rank", "score"}`` sorted by rank, and a report.

    ranked_ids / ranked_scores [nq, K]: the teacher's candidates, best first (ids < 0 are
    padding). ``rank`` is the 0-based position among the candidates left after removing the
    positives (by id, or by a text equal to a positive's after strip). The seed counts ranks in
    the raw retrieved list; we count after removal so that the window [range_min, range_max)
    means the same thing for a query with one positive as for one with five, and searching
    ``retrieval_depth`` deep always fills it (text duplicates can still shorten it: see n_short).

    With ``margin`` (a ``Cap``; a bare number is the relative cap), window candidates scoring >=
    the cap's limit of the reference score (``Cap.limit``) are dropped as likely false negatives;
    they keep their ranks (the filter removes, it does not re-rank).
    The reference is the best teacher score among the removed positives, or
    ``positive_scores[i]`` (e.g. the teacher's score of the query against its positive, for
    positives ranked below K), whichever is higher. With neither, the query is not filtered and
    is counted in ``n_margin_skipped``. Scores are assumed positive (cosine, BM25).

    The draw uses a Generator seeded by (seed, hash of the query key), so a query's negatives do
    not depend on the order or number of the other queries.
    """
    per_query = {"pos_texts": pos_texts, "query_keys": query_keys, "positive_scores": positive_scores}
    problems = _shape_problems(ranked_ids, ranked_scores, len(positives), per_query)
    problems += setting_problems(k, range_min, range_max, margin, seed)
    if problems:
        raise ValueError("select_negatives: " + "; ".join(problems))
    report, cap = SelectReport(n_queries=len(positives)), as_cap(margin)
    selected = []
    for i, key in enumerate(query_keys):
        cand_ids, cand_scores, pos_found = _remove_positives(
            ranked_ids[i], ranked_scores[i], positives[i], pos_texts[i], doc_texts, report
        )
        pool = [
            {"id": cand_ids[r], "rank": r, "score": cand_scores[r]}
            for r in range(range_min, min(range_max, len(cand_ids)))
        ]
        report.above_window += min(range_min, len(cand_ids))
        given = None if positive_scores is None else positive_scores[i]
        if cap is not None:
            pool = _margin_filter(pool, _reference(pos_found, given), cap, report)
        picked = _draw(pool, k, seed, key)
        report.n_short += len(picked) < k
        report.n_empty += not picked
        selected.append(picked)
    return selected, report


def _remove_positives(
    ids: np.ndarray,
    scores: np.ndarray,
    pos_ids: set[int],
    pos_texts: Sequence[str],
    doc_texts: Sequence[str],
    report: SelectReport,
) -> tuple[list[int], list[float], list[float]]:
    """Split the ranked list into non-positives (in order) and the scores of removed positives."""
    texts = {t.strip() for t in pos_texts}
    cand_ids, cand_scores, pos_found = [], [], []
    for doc_id, score in zip(ids.tolist(), scores.tolist()):
        if doc_id < 0:
            continue
        if doc_id in pos_ids:
            report.dropped_as_positive_id += 1
        elif doc_texts[doc_id].strip() in texts:
            report.dropped_as_positive_text += 1
        else:
            cand_ids.append(doc_id)
            cand_scores.append(score)
            continue
        pos_found.append(score)
    return cand_ids, cand_scores, pos_found


def _reference(pos_found: list[float], given: float | None) -> float | None:
    """Best known teacher score of a positive of this query, or None if none is known."""
    known = pos_found + ([] if given is None else [float(given)])
    return max(known) if known else None


def _margin_filter(pool: list[dict], reference: float | None, cap: Cap, report: SelectReport) -> list[dict]:
    """Drop candidates the teacher scores almost as high as the positive: likely unlabelled positives."""
    if reference is None:
        report.n_margin_skipped += 1
        return pool
    limit = cap.limit(reference)
    kept = [c for c in pool if c["score"] < limit]
    report.dropped_by_margin += len(pool) - len(kept)
    return kept


def _draw(pool: list[dict], k: int, seed: int, key: str | int) -> list[dict]:
    """k candidates without replacement, in rank order (the pool is already rank-sorted)."""
    digest = hashlib.blake2b(str(key).encode(), digest_size=8).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest, "little")])
    picks = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [pool[j] for j in sorted(picks.tolist())]


def _shape_problems(ranked_ids, ranked_scores, nq: int, per_query: dict) -> list[str]:
    """Arrays that do not fit together: [nq, K] rankings, one entry per query elsewhere."""
    problems = []
    if np.ndim(ranked_ids) != 2 or np.shape(ranked_ids) != np.shape(ranked_scores):
        problems.append(
            f"ranked_ids {np.shape(ranked_ids)} and ranked_scores {np.shape(ranked_scores)} "
            "must be the same [nq, K] shape"
        )
    elif len(ranked_ids) != nq:
        problems.append(f"ranked_ids has {len(ranked_ids)} rows but positives has {nq} queries")
    for name, seq in per_query.items():
        if seq is not None and len(seq) != nq:
            problems.append(f"{name} has {len(seq)} entries, expected {nq} (one per query)")
    return problems


def setting_problems(
    k: int, range_min: int, range_max: int, margin: float | Cap | None, seed: int
) -> list[str]:
    """Every bad setting at once, named (``MineOptions`` checks them before any encoding)."""
    problems = []
    if k < 1:
        problems.append(f"k must be >= 1, got {k}")
    if not 0 <= range_min < range_max:
        problems.append(f"the rank window needs 0 <= range_min < range_max, got {range_min} {range_max}")
    if isinstance(margin, Cap):
        problems += margin.problems()
    elif margin is not None and margin <= 0:
        problems.append(f"margin must be > 0 (e.g. 0.95), got {margin}")
    if seed < 0:
        problems.append(f"seed must be >= 0, got {seed}")
    return problems
