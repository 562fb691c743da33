"""Mining: FAISS search equals brute force (ties to lower id), BM25 teacher, negative selection."""

from __future__ import annotations

import numpy as np
import pytest

from sfr_ds.mining.bm25 import BM25Scorer
from sfr_ds.mining.search import search, topk_rows
from sfr_ds.mining.select import retrieval_depth, select_negatives
from sfr_ds.mining.teachers import BM25Rank


def brute_topk(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full score matrix, sorted by score desc then id asc."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    ids = np.broadcast_to(np.arange(len(corpus)), scores.shape)
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), order


# --- search ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nq,nd,d,k,chunk",
    [
        (37, 50, 8, 5, 10),
        (100, 300, 16, 100, 7),
        (5, 20, 4, 20, 2),  # k == corpus size
        (3, 10, 4, 50, 2),  # k > corpus size: clipped
    ],
)
def test_search_equals_brute_force_with_ties(nq, nd, d, k, chunk):
    # Small integers make every score exact in float32, and produce many exact ties.
    rng = np.random.default_rng(nq)
    queries = rng.integers(-2, 3, (nq, d)).astype(np.float32)
    corpus = rng.integers(-2, 3, (nd, d)).astype(np.float32)
    scores, ids = search(queries, corpus, k, query_chunk=chunk, use_gpu=False)
    ref_scores, ref_ids = brute_topk(queries, corpus, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert ids.shape == (nq, min(k, nd))
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


@pytest.mark.parametrize("nq,nd,d,k,chunk", [(64, 500, 32, 10, 25), (19, 1000, 64, 100, 8)])
def test_search_equals_brute_force_normalised(nq, nd, d, k, chunk):
    rng = np.random.default_rng(d)
    queries, corpus = (
        x / np.linalg.norm(x, axis=1, keepdims=True)
        for x in (rng.standard_normal((n, d)).astype(np.float32) for n in (nq, nd))
    )
    scores, ids = search(queries, corpus, k, query_chunk=chunk, use_gpu=False)
    ref_scores, ref_ids = brute_topk(queries, corpus, k)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # Ids agree in order, except where float32 rounding may swap two scores closer than 1e-5.
    exact = queries.astype(np.float64) @ corpus.astype(np.float64).T
    for r, c in zip(*np.nonzero(ids != ref_ids)):
        assert abs(exact[r, ids[r, c]] - ref_scores[r, c]) < 1e-5


def test_search_boundary_tie_takes_lower_ids():
    # Ten identical documents tie for every rank: the top 3 must be ids 0, 1, 2 in every chunk.
    corpus = np.ones((10, 4), np.float32)
    queries = np.ones((7, 4), np.float32)
    _, ids = search(queries, corpus, 3, query_chunk=2, use_gpu=False)
    np.testing.assert_array_equal(ids, np.tile([0, 1, 2], (7, 1)))


def test_search_rejects_bad_arguments():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="k must be >= 1"):
        search(x, x, 0)
    with pytest.raises(ValueError, match="finite"):
        search(x, np.full((2, 4), np.nan, np.float32), 1)
    with pytest.raises(ValueError, match=r"\[nq, d\]"):
        search(x, np.ones((2, 5), np.float32), 1)
    with pytest.raises(RuntimeError, match="no GPU"):
        search(x, x, 1, use_gpu=True)


def test_topk_rows_ties_and_order():
    scores = np.array([[1, 3, 3, 2, 3], [0, 0, 0, 0, 0]], np.float32)
    top, ids = topk_rows(scores, 2)
    np.testing.assert_array_equal(ids, [[1, 2], [0, 1]])
    np.testing.assert_array_equal(top, [[3, 3], [0, 0]])


# --- BM25 -----------------------------------------------------------------------------------

DOCS = [
    "The cat sat on the mat.",
    "Dogs run fast in the park.",
    "Brewing beer is the science of zymurgy and fermentation.",
    "The park has a cat and a dog.",
    "Fermentation of bread dough by yeast.",
]


def test_bm25_rare_word_first():
    teacher = BM25Scorer(DOCS)
    scores, ids = teacher.search(["what is zymurgy", "cat in the park"], k=3)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (2, 3)
    assert ids[0, 0] == 2 and scores[0, 0] > scores[0, 1]
    assert ids[1, 0] == 3  # the only document with both "cat" and "park"
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_bm25_deterministic_and_unknown_query():
    teacher = BM25Scorer(DOCS)
    first = teacher.search(["fermentation", "xyzzy", "the"], k=10)
    second = BM25Scorer(DOCS).search(["fermentation", "xyzzy", "the"], k=10)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    scores, ids = first
    assert ids.shape == (3, 5)  # k clipped to the corpus
    np.testing.assert_array_equal(ids[1], np.arange(5))  # all zero: lower id first
    np.testing.assert_array_equal(scores[2], 0)  # stopword-only query


def test_bm25_rank_orders_by_score_drops_non_matches_and_scores_positives():
    """BM25Rank (the bm25 teacher mining calls) against a brute-force ranking of the full score
    rows: best first, ties to the lower id, documents sharing no word with the query absent (-1),
    and each query's best score among its positives."""
    queries = ["cat in the park", "fermentation yeast", "xyzzy"]
    positives = [{3}, {4, 0}, set()]
    got = BM25Rank().rank(queries, ["an instruction"] * 3, DOCS, positives, depth=4)
    full = BM25Scorer(DOCS).scores(queries)
    for i in range(len(queries)):
        order = sorted(range(len(DOCS)), key=lambda d: (-full[i, d], d))[:4]
        expected = [d if full[i, d] > 0 else -1 for d in order]
        assert got.ids[i].tolist() == expected
        np.testing.assert_allclose(got.scores[i], full[i, order], rtol=1e-6)
    assert got.positive_scores[0] == pytest.approx(full[0, 3])
    assert got.positive_scores[1] == pytest.approx(max(full[1, 4], full[1, 0]))
    assert got.positive_scores[2] is None
    assert (got.ids[2] == -1).all()  # no known word: nothing is a candidate


# --- select_negatives -----------------------------------------------------------------------


def make_mining_case(nq=12, n_docs=400, depth=40, seed=0):
    """Random ranked lists with positives and duplicates of positive text under other ids."""
    rng = np.random.default_rng(seed)
    doc_texts = [f"doc {i}" for i in range(n_docs)]
    positives, pos_texts, ranked_ids = [], [], []
    for q in range(nq):
        row = rng.choice(n_docs, depth, replace=False)
        pos = {int(row[j]) for j in rng.choice(depth, 1 + q % 3, replace=False)}
        dup = int(row[rng.integers(depth)])
        if dup not in pos:  # another id carrying a positive's text, padded with spaces
            doc_texts[dup] = f"  {doc_texts[min(pos)]} "
        positives.append(pos)
        pos_texts.append([doc_texts[p] for p in sorted(pos)])
        ranked_ids.append(row)
    ranked_ids = np.array(ranked_ids, np.int64)
    ranked_scores = np.sort(rng.uniform(0.2, 0.9, ranked_ids.shape), axis=1)[:, ::-1].astype(np.float32)
    return ranked_ids, ranked_scores, positives, doc_texts, pos_texts


def expected_window(ids, scores, pos, pos_texts, doc_texts, lo, hi):
    """Direct computation: (rank, id, score) of non-positives in the window."""
    texts = {t.strip() for t in pos_texts}
    keep = [
        (i, s)
        for i, s in zip(ids.tolist(), scores.tolist())
        if i not in pos and doc_texts[i].strip() not in texts
    ]
    return [(r, i, s) for r, (i, s) in enumerate(keep) if lo <= r < hi]


def test_select_window_and_no_positives():
    ids, scores, positives, doc_texts, pos_texts = make_mining_case()
    keys = [f"q{i}" for i in range(len(ids))]
    out, report = select_negatives(
        ids, scores, positives, doc_texts, pos_texts, 5, query_keys=keys, range_min=3, range_max=30
    )
    assert report.dropped_as_positive_text > 0
    for q, negs in enumerate(out):
        texts = {t.strip() for t in pos_texts[q]}
        window = {
            (r, i)
            for r, i, _ in expected_window(ids[q], scores[q], positives[q], pos_texts[q], doc_texts, 3, 30)
        }
        assert len(negs) == 5 and [n["rank"] for n in negs] == sorted(n["rank"] for n in negs)
        for n in negs:
            assert 3 <= n["rank"] < 30 and (n["rank"], n["id"]) in window
            assert n["id"] not in positives[q] and doc_texts[n["id"]].strip() not in texts
    assert report.dropped_as_positive_id == sum(len(p) for p in positives)


def test_select_margin_filter_matches_direct_computation():
    ids, scores, positives, doc_texts, pos_texts = make_mining_case(seed=1)
    keys = list(range(len(ids)))
    margin, lo, hi = 0.95, 0, 35
    out, report = select_negatives(
        ids,
        scores,
        positives,
        doc_texts,
        pos_texts,
        100,
        query_keys=keys,
        range_min=lo,
        range_max=hi,
        margin=margin,
    )
    dropped = 0
    for q, negs in enumerate(out):
        texts = {t.strip() for t in pos_texts[q]}
        ref = max(
            s
            for i, s in zip(ids[q].tolist(), scores[q].tolist())
            if i in positives[q] or doc_texts[i].strip() in texts
        )
        window = expected_window(ids[q], scores[q], positives[q], pos_texts[q], doc_texts, lo, hi)
        kept = [(r, i) for r, i, s in window if s < margin * ref]
        dropped += len(window) - len(kept)
        assert [(n["rank"], n["id"]) for n in negs] == kept  # k exceeds the window: all kept
    assert dropped > 0 and report.dropped_by_margin == dropped and report.n_margin_skipped == 0


def test_select_margin_uses_given_score_or_skips():
    ids = np.array([[5, 6, 7, 8]])
    scores = np.array([[0.9, 0.8, 0.5, 0.1]], np.float32)
    args = (ids, scores, [{99}], [f"d{i}" for i in range(100)], [["d99"]], 10)
    out, report = select_negatives(
        *args, query_keys=["a"], range_min=0, range_max=4, margin=0.9, positive_scores=[0.6]
    )
    assert [n["id"] for n in out[0]] == [7, 8] and report.dropped_by_margin == 2
    out, report = select_negatives(*args, query_keys=["a"], range_min=0, range_max=4, margin=0.9)
    assert len(out[0]) == 4 and report.n_margin_skipped == 1 and report.dropped_by_margin == 0


def test_select_is_deterministic_and_order_independent():
    ids, scores, positives, doc_texts, pos_texts = make_mining_case(seed=2)
    keys = [f"query-{i}" for i in range(len(ids))]
    kw = dict(range_min=2, range_max=30)
    first, _ = select_negatives(
        ids, scores, positives, doc_texts, pos_texts, 4, query_keys=keys, seed=7, **kw
    )
    again, _ = select_negatives(
        ids, scores, positives, doc_texts, pos_texts, 4, query_keys=keys, seed=7, **kw
    )
    assert first == again
    perm = np.random.default_rng(0).permutation(len(ids))
    shuffled, _ = select_negatives(
        ids[perm],
        scores[perm],
        [positives[p] for p in perm],
        doc_texts,
        [pos_texts[p] for p in perm],
        4,
        query_keys=[keys[p] for p in perm],
        seed=7,
        **kw,
    )
    assert [shuffled[j] for j in np.argsort(perm)] == first
    other, _ = select_negatives(
        ids, scores, positives, doc_texts, pos_texts, 4, query_keys=keys, seed=8, **kw
    )
    assert other != first


def test_select_reports_short_and_empty():
    doc_texts = [f"d{i}" for i in range(20)]
    ids = np.array(
        [
            list(range(0, 10)),  # 10 non-positives after removing 1: window 2..8 full
            [10, 11, 12, 13, -1, -1, -1, -1, -1, -1],  # 4 candidates, 3 after the positive: ranks 2 only
            [14, 15, -1, -1, -1, -1, -1, -1, -1, -1],  # nothing reaches rank 2
        ]
    )
    scores = np.tile(np.linspace(1, 0.1, 10, dtype=np.float32), (3, 1))
    positives = [{0}, {10}, {14}]
    pos_texts = [[doc_texts[0]], [doc_texts[10]], [doc_texts[14]]]
    out, report = select_negatives(
        ids, scores, positives, doc_texts, pos_texts, 3, query_keys=["a", "b", "c"], range_min=2, range_max=8
    )
    assert [len(o) for o in out] == [3, 1, 0]
    assert out[1] == [{"id": 13, "rank": 2, "score": pytest.approx(scores[1, 3])}]
    assert (report.n_queries, report.n_short, report.n_empty) == (3, 2, 1)
    assert retrieval_depth(8, positives) == 9


def test_select_rejects_bad_arguments():
    ids = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError) as err:
        select_negatives(
            ids,
            np.zeros((2, 4)),
            [set(), set()],
            ["x"],
            [[]],
            0,
            query_keys=["a", "b"],
            range_min=5,
            range_max=5,
            margin=0,
        )
    for part in ("same [nq, K] shape", "pos_texts has 1", "k must be", "range_min < range_max", "margin"):
        assert part in str(err.value)
