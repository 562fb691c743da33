"""``sfr-ds prepare`` and ``sfr-ds mine`` as real processes on SciFact, checked against numpy.

For time, the dense checks use 150 train queries over a 400-document sub-corpus (their
positives plus a seeded sample of the rest) with MiniLM at 64 document tokens; the MiniLM
embeddings of the module fixture are shared by every test that needs them.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA, TINY, proc_env, read_metrics, sfr_ds

from sfr_ds.config import ModelConfig
from sfr_ds.data.prepare import INSTRUCTIONS, from_beir, from_labelled, from_sts
from sfr_ds.data.records import read_jsonl
from sfr_ds.data.tokens import format_query
from sfr_ds.encode import TextEncoder

pytestmark = pytest.mark.integration

SCIFACT = SHARED_DATA / "scifact"
N_QUERIES, N_DOCS, DOC_LEN, SHARD = 150, 400, 64, 20
WINDOW, K = (30, 100), 7


def mine_args(train: Path, corpus: Path, teacher: str, out: Path, cache: Path, *extra) -> list:
    return [
        "mine",
        train,
        "--corpus",
        corpus,
        "--teacher",
        teacher,
        "--out",
        out,
        "--cache-dir",
        cache,
        "--shard-size",
        SHARD,
        "--doc-max-len",
        DOC_LEN,
        "--no-progress",
        *extra,
    ]


def printed_recall(stdout: str) -> float:
    return float(re.search(r"recall@100 ([0-9.]+)", stdout).group(1))


def train_on(mined: Path, run_dir: Path) -> list[dict]:
    """Two steps of the tiny model on a mined file; its metrics."""
    sfr_ds(
        "train",
        TINY,
        f"data.train_files=[{mined}]",
        "optim.max_steps=2",
        "data.global_batch_size=8",
        "--output-dir",
        run_dir,
    )
    return read_metrics(run_dir)


@pytest.fixture(scope="module")
def scifact(tmp_path_factory) -> SimpleNamespace:
    """SciFact train prepared by the CLI; a query subset and a sub-corpus that holds its positives."""
    if not SHARED_DATA.exists():  # as the shared_data fixture, which is function-scoped
        pytest.skip(f"{SHARED_DATA} not present")
    tmp = tmp_path_factory.mktemp("scifact")
    p = sfr_ds(
        "prepare", "--beir", SCIFACT, "--split", "train", "--dataset", "scifact", "--out", tmp / "all.jsonl"
    )
    assert "qrels/train.tsv: 809 written, 0 skipped" in p.stdout
    lines = (tmp / "all.jsonl").read_text().splitlines(keepends=True)[:N_QUERIES]
    (tmp / "train.jsonl").write_text("".join(lines))
    needed = {d for line in lines for d in json.loads(line)["pos_ids"]}
    docs = (SCIFACT / "corpus.jsonl").read_text().splitlines(keepends=True)
    others = [i for i, line in enumerate(docs) if json.loads(line)["_id"] not in needed]
    keep = set(random.Random(0).sample(others, N_DOCS - len(needed))) | (set(range(len(docs))) - set(others))
    (tmp / "corpus.jsonl").write_text("".join(docs[i] for i in sorted(keep)))
    return SimpleNamespace(dir=tmp, train=tmp / "train.jsonl", corpus=tmp / "corpus.jsonl")


@pytest.fixture(scope="module")
def minilm(scifact) -> SimpleNamespace:
    """One uninterrupted MiniLM mining run; its cache is reused by the checks below."""
    out, cache = scifact.dir / "minilm.jsonl", scifact.dir / "cache"
    p = sfr_ds(*mine_args(scifact.train, scifact.corpus, "builtin:minilm", out, cache))
    return SimpleNamespace(out=out, cache=cache, stdout=p.stdout)


def cached(cache: Path, kind: str) -> np.ndarray:
    (folder,) = cache.glob(f"{kind}-*")
    return np.concatenate([np.load(f) for f in sorted(folder.glob("shard-*.npy"))])


def brute_force(scifact, minilm) -> SimpleNamespace:
    """Full score matrix in float64 from the cached embeddings, ordered (score desc, id asc)."""
    ids = [json.loads(line)["_id"] for line in scifact.corpus.read_text().splitlines()]
    q, d = cached(minilm.cache, "query").astype(np.float64), cached(minilm.cache, "doc")
    scores = q @ d.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(len(ids)), scores.shape), -scores), axis=1)
    return SimpleNamespace(ids=ids, row={i: n for n, i in enumerate(ids)}, scores=scores, order=order)


# --- prepare --------------------------------------------------------------------------------


def test_prepare_yaml_equals_the_converters(shared_data, tmp_path):
    spec = tmp_path / "sources.yaml"
    spec.write_text(
        "instructions: {stsb: Find paraphrases}\n"
        "sources:\n"
        f"  - {{beir: {SCIFACT}, split: test, dataset: scifact}}\n"
        f"  - {{sts: {shared_data / 'stsbenchmark' / 'sts-train.csv'}, dataset: stsb}}\n"
        f"  - {{labelled: {shared_data / 'banking77' / 'train.csv'}, dataset: banking77,"
        " task_type: clustering, n_neg: 3}\n"
    )
    p = sfr_ds("prepare", spec, "--out", tmp_path / "out.jsonl", "--instruction", "scifact=Find evidence")
    parts = [
        from_beir(SCIFACT, "test", "scifact", instruction="Find evidence"),
        from_sts(shared_data / "stsbenchmark" / "sts-train.csv", "stsb", instruction="Find paraphrases"),
        from_labelled(shared_data / "banking77" / "train.csv", "banking77", task_type="clustering", n_neg=3),
    ]
    for _, report in parts:
        assert str(report) in p.stdout
    expected = [r.to_json() for records, _ in parts for r in records]
    assert [r.to_json() for r in read_jsonl(tmp_path / "out.jsonl")] == expected
    assert f"wrote {len(expected)} records" in p.stdout


# --- dense teacher --------------------------------------------------------------------------


def test_printed_recall_equals_brute_force(scifact, minilm):
    records = read_jsonl(scifact.train)
    ref = brute_force(scifact, minilm)
    assert ref.scores.shape == (N_QUERIES, N_DOCS)
    shares = [
        len({ref.ids[j] for j in ref.order[i, :100]} & set(r.extra["pos_ids"])) / len(r.extra["pos_ids"])
        for i, r in enumerate(records)
    ]
    # float32 FAISS vs float64 numpy may swap a near-tie at rank 100: one positive of one query.
    assert abs(printed_recall(minilm.stdout) - np.mean(shares)) <= 1 / N_QUERIES
    assert printed_recall(minilm.stdout) > 0.9


def test_cached_embeddings_are_the_encoder_path(scifact, minilm):
    """The cache holds what TextEncoder gives for the record's formatted query and the document."""
    enc = TextEncoder.from_model_config(
        ModelConfig(name_or_path="builtin:minilm", pooling="mean", dtype="fp32"), 128, DOC_LEN, 4, "cpu"
    )
    records = read_jsonl(scifact.train)[:6]
    docs = [
        " ".join(filter(None, (d["title"].strip(), d["text"].strip())))
        for d in map(json.loads, scifact.corpus.read_text().splitlines()[:6])
    ]
    queries = [format_query(r.query, r.instruction) for r in records]
    np.testing.assert_allclose(cached(minilm.cache, "doc")[:6], enc.encode(docs, DOC_LEN), atol=1e-5)
    np.testing.assert_allclose(cached(minilm.cache, "query")[:6], enc.encode(queries, 128), atol=1e-5)


def test_negatives_in_window_never_positive_and_ranked_as_brute_force(scifact, minilm):
    ref = brute_force(scifact, minilm)
    mined = read_jsonl(minilm.out)
    assert len(mined) == N_QUERIES and f"fewer than {K} negatives" in minilm.stdout
    corpus = {d["_id"]: d for d in map(json.loads, scifact.corpus.read_text().splitlines())}
    for i, r in enumerate(mined):
        x = r.extra
        assert len(r.neg) == K and x["neg_ranks"] == sorted(x["neg_ranks"])
        assert all(WINDOW[0] <= rank < WINDOW[1] for rank in x["neg_ranks"])
        assert not set(x["neg_ids"]) & set(x["pos_ids"])
        assert not {n.strip() for n in r.neg} & {p.strip() for p in r.pos}
        assert all(corpus[d]["title"] in n for d, n in zip(x["neg_ids"], r.neg))
        # rank = position in the brute-force order once the positives are taken out
        order = [ref.ids[j] for j in ref.order[i] if ref.ids[j] not in x["pos_ids"]]
        for doc_id, rank, score in zip(x["neg_ids"], x["neg_ranks"], x["neg_scores"]):
            assert abs(ref.scores[i, ref.row[doc_id]] - score) < 1e-5
            ref_score = ref.scores[i, ref.row[order[rank]]]
            assert order[rank] == doc_id or abs(ref_score - score) < 1e-5  # a float32 near-tie


def test_margin_drops_candidates_close_to_the_positive(scifact, minilm):
    """Re-mined from the cache alone (no encoding): every negative scores below 0.95 x the
    query's best positive, per the brute-force scores."""
    out = scifact.dir / "margin.jsonl"
    p = sfr_ds(
        *mine_args(scifact.train, scifact.corpus, "builtin:minilm", out, minilm.cache, "--margin", "0.95")
    )
    dropped = int(re.search(r"dropped by the cap: (\d+)", p.stdout).group(1))
    assert f"{N_DOCS // SHARD} were cached" in p.stdout and dropped > 0 and "cap relative:0.95" in p.stdout
    ref = brute_force(scifact, minilm)
    for i, r in enumerate(read_jsonl(out)):
        best = max(ref.scores[i, ref.row[d]] for d in r.extra["pos_ids"])
        assert all(s < 0.95 * best + 1e-6 for s in r.extra["neg_scores"])
    # --margin is the relative cap: the same file byte for byte
    cap = scifact.dir / "cap.jsonl"
    sfr_ds(
        *mine_args(
            scifact.train, scifact.corpus, "builtin:minilm", cap, minilm.cache, "--cap", "relative:0.95"
        )
    )
    assert cap.read_bytes() == out.read_bytes()


def test_absolute_cap_with_a_window_from_the_top(scifact, minilm):
    """--range 0 100 --cap absolute:0.05 (TopK-MarginPos): every negative scores below the best
    positive - 0.05 per the brute-force scores, and the report counts what each rule dropped."""
    out = scifact.dir / "absolute.jsonl"
    args = ("--range", 0, 100, "--cap", "absolute:0.05")
    p = sfr_ds(*mine_args(scifact.train, scifact.corpus, "builtin:minilm", out, minilm.cache, *args))
    counts = re.search(r"above the window: (\d+); dropped by the cap: (\d+)", p.stdout)
    assert counts and int(counts.group(1)) == 0 and int(counts.group(2)) > 0, p.stdout
    ref, mined = brute_force(scifact, minilm), read_jsonl(out)
    for i, r in enumerate(mined):
        best = max(ref.scores[i, ref.row[d]] for d in r.extra["pos_ids"])
        assert all(s < best - 0.05 + 1e-6 for s in r.extra["neg_scores"])
    # a query whose positive ranks low keeps nothing of its top 100: counted, and rare
    empty = sum(not r.neg for r in mined)
    assert f"({empty} with none)" in p.stdout and empty < len(mined) // 10


def test_cap_policies_match_a_direct_computation():
    """select_negatives with each cap against the window computed by hand, then capped."""
    from test_mining_search import expected_window, make_mining_case

    from sfr_ds.mining.select import Cap, select_negatives

    ids, scores, positives, doc_texts, pos_texts = make_mining_case(seed=3)
    for cap, lo, hi in [(Cap("relative", 0.9), 0, 30), (Cap("absolute", 0.05), 5, 25), (None, 5, 25)]:
        out, report = select_negatives(
            ids,
            scores,
            positives,
            doc_texts,
            pos_texts,
            100,
            query_keys=list(range(len(ids))),
            range_min=lo,
            range_max=hi,
            margin=cap,
        )
        dropped = above = 0
        for q, negs in enumerate(out):
            texts = {t.strip() for t in pos_texts[q]}
            row = zip(ids[q].tolist(), scores[q].tolist())
            ref = max(s for i, s in row if i in positives[q] or doc_texts[i].strip() in texts)
            limit = {None: np.inf, "relative": 0.9 * ref, "absolute": ref - 0.05}[cap and cap.kind]
            window = expected_window(ids[q], scores[q], positives[q], pos_texts[q], doc_texts, lo, hi)
            kept = [(r, i) for r, i, s in window if s < limit]
            dropped += len(window) - len(kept)
            above += len(expected_window(ids[q], scores[q], positives[q], pos_texts[q], doc_texts, 0, lo))
            assert [(n["rank"], n["id"]) for n in negs] == kept
        assert report.dropped_by_margin == dropped and report.above_window == above
        assert (dropped > 0) == (cap is not None) and (above > 0) == (lo > 0)
    # a bare number is the relative cap
    same = [
        select_negatives(
            ids, scores, positives, doc_texts, pos_texts, 3, query_keys=list(range(len(ids))), margin=m
        )
        for m in (0.9, Cap("relative", 0.9))
    ]
    assert same[0] == same[1]


def test_cap_parses_and_refuses_with_a_reason():
    from sfr_ds.mining.select import Cap

    assert Cap.parse("relative:0.95") == Cap("relative", 0.95)
    assert Cap.parse(str(Cap("absolute", 0.05))) == Cap("absolute", 0.05)
    for bad, says in [
        ("percent:0.9", "relative or absolute"),
        ("relative:", "relative:ALPHA"),
        ("relative:0", "> 0"),
        ("absolute:-1", ">= 0"),
        ("absolute:nan", "finite"),
    ]:
        with pytest.raises(ValueError, match=says):
            Cap.parse(bad)


def test_killed_encoding_resumes_on_two_ranks_to_identical_output(scifact, minilm, tmp_path):
    """Killed during corpus encoding, then resumed with two ranks sharing the missing shards:
    finished shards are kept and the output is byte for byte the uninterrupted run's."""
    args = mine_args(
        scifact.train, scifact.corpus, "builtin:minilm", tmp_path / "out.jsonl", tmp_path / "cache"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfr_ds.cli", *map(str, args)],
        cwd=ROOT,
        env=proc_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("cache/doc-*/shard-*.npy"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {f: f.stat() for f in tmp_path.glob("cache/doc-*/shard-*.npy")}
    assert 2 <= len(done) < N_DOCS // SHARD and not (tmp_path / "out.jsonl").exists()

    p = sfr_ds(*args, "--nproc-per-node", 2)
    n_shards = N_DOCS // SHARD
    assert f"doc embeddings: {n_shards} shards of up to {SHARD}, {len(done)} were cached" in p.stdout
    assert all(
        (f.stat().st_mtime_ns, f.stat().st_ino) == (s.st_mtime_ns, s.st_ino) for f, s in done.items()
    )  # finished shards were not written again
    assert (tmp_path / "out.jsonl").read_bytes() == minilm.out.read_bytes()


def test_dense_mined_file_trains(minilm, tmp_path):
    metrics = train_on(minilm.out, tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2] and all(np.isfinite(m["loss"]) for m in metrics)


# --- BM25, then our own model as teacher ----------------------------------------------------


@pytest.mark.slow  # tests/test_demo.py's ablation mines with a trained run (self:) by default
def test_bm25_then_self_teacher_rounds(scifact, tmp_path):
    """Round 1: BM25 over the whole corpus, then train; round 2: that run is the teacher."""
    bm25_out = tmp_path / "bm25.jsonl"
    p = sfr_ds(
        "mine",
        scifact.train,
        "--corpus",
        SCIFACT / "corpus.jsonl",
        "--teacher",
        "bm25",
        "--out",
        bm25_out,
        "--k",
        K,
    )
    assert "5,183 docs" in p.stdout and printed_recall(p.stdout) > 0.8
    mined = read_jsonl(bm25_out)
    for r in mined:
        assert len(r.neg) <= K and not set(r.extra["neg_ids"]) & set(r.extra["pos_ids"])
        assert all(WINDOW[0] <= rank < WINDOW[1] for rank in r.extra["neg_ranks"])
    # a short claim shares a word with fewer than 30 documents: fewer negatives, and reported
    short = sum(len(r.neg) < K for r in mined)
    assert f"{short} queries with fewer than {K} negatives" in p.stdout and short < len(mined) // 10
    assert len(train_on(bm25_out, tmp_path / "round1")) == 2

    self_out = tmp_path / "self.jsonl"
    p = sfr_ds(
        *mine_args(scifact.train, scifact.corpus, f"self:{tmp_path / 'round1'}", self_out, tmp_path / "cache")
    )
    assert "teacher self:" in p.stdout and "0 were cached" in p.stdout
    mined = read_jsonl(self_out)
    assert len(mined) == N_QUERIES and all(len(r.neg) == K for r in mined)
    assert all(not set(r.extra["neg_ids"]) & set(r.extra["pos_ids"]) for r in mined)
    key = json.loads(next(tmp_path.glob("cache/query-*/key.json")).read_text())
    assert (key["pooling"], key["append_eos"], key["max_len"]) == ("last", True, 32)  # the run's
    assert len(key["adapter"]) == 64 and key["instruction"] == INSTRUCTIONS["scifact"]


def test_false_negative_audit_counts_by_hand():
    """The audit over a fake teacher whose ranking is known (every other text in index order,
    scores falling by 0.011): each policy's false negatives (mined texts with the query's label)
    against counting here, with k large enough that every candidate a policy keeps is mined."""
    from sfr_ds.data.records import Record
    from sfr_ds.mining import audit
    from sfr_ds.mining.teachers import Ranking

    labels = ["a"] * 4 + ["b"] * 3 + ["c"] * 40
    records = [
        Record(f"t{i}", [lb], [], "classification", "x", "", {"label": lb}) for i, lb in enumerate(labels)
    ]
    task = audit.labelled_task(records)
    assert len(task.queries) == len(labels) and all(len(t) == 2 for t in task.told)

    class ByIndex:
        name = "fake"

        def rank(self, queries, instructions, corpus, positives, depth):
            ids = np.asarray([[j for j, t in enumerate(corpus) if t != q] for q in queries])
            scores = np.tile(1 - 0.011 * np.arange(ids.shape[1]), (len(queries), 1)).astype(np.float32)
            return Ranking(scores, ids, [1.0] * len(queries))

    k = 100
    rows = {r.policy.name: r for r in audit.audit(task, ByIndex(), k)}
    for policy in audit.policies(k):
        n_false = n_neg = 0
        for i, (told, bad) in enumerate(zip(task.told, task.is_false)):
            raw = [j for j in range(len(labels)) if j != i]  # position p scores 1 - 0.011 p
            cand = [(p, j) for p, j in enumerate(raw) if j not in told]
            kept = [
                j
                for p, j in cand[policy.range_min : policy.range_max]
                if not policy.cap or 1 - 0.011 * p < 0.95
            ]
            n_neg, n_false = n_neg + len(kept), n_false + sum(j in bad for j in kept)
        got = rows[policy.name]
        assert (got.n_negatives, got.n_false) == (n_neg, n_false), policy
    assert rows["naive top-k"].n_false > rows["window"].n_false > 0
    assert rows["cap"].n_negatives < rows["naive top-k"].n_negatives  # the cap dropped the top

    retrieval = [
        Record("q", ["p1", "p2"], ["n1"], "retrieval", "y", ""),
        Record("r", ["p3"], [], "retrieval", "y", ""),
    ]
    hidden = audit.hidden_positive_task(retrieval)
    assert (
        hidden.queries == ["q"] and len(hidden.told[0]) == 1 and hidden.is_false[0] | hidden.told[0] == {0, 1}
    )


def test_audit_command_prints_and_writes_one_table(tmp_path):
    """sfr-ds audit-negatives on two small files: eight rows (2 data x 4 policies), the same in
    the file it writes atomically; a second run without --overwrite is refused."""
    intents = ["card", "loan", "fee"]
    labelled = [
        {"query": f"{w} question {i} about my {w}", "pos": [w], "neg": [], "task_type": "classification",
         "dataset": "bank", "instruction": "", "label": w}
        for w in intents for i in range(4)
    ]  # fmt: skip
    retrieval = [
        {"query": f"q {i} word{i}", "pos": [f"word{i} doc a", f"word{i} doc b"], "neg": [f"other {i}"],
         "task_type": "retrieval", "dataset": "sci", "instruction": ""}
        for i in range(5)
    ]  # fmt: skip
    files = {}
    for name, rows in (("labelled", labelled), ("retrieval", retrieval)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["audit-negatives", "--labelled", files["labelled"], "--retrieval", files["retrieval"]]
    p = sfr_ds(*args, "--k", 2, "--out", tmp_path / "audit.md")
    table = [line for line in p.stdout.splitlines() if line.startswith("| bm25 |")]
    assert len(table) == 8 and "bank (labelled: exact)" in table[0] and "sci (hidden positive)" in table[4]
    assert (tmp_path / "audit.md").read_text().splitlines()[2:] == table
    again = sfr_ds(*args, "--out", tmp_path / "audit.md", check=False)
    assert again.returncode != 0 and "Traceback" not in again.stderr and "--overwrite" in again.stderr
