"""prepare.py against counts and texts computed here straight from the source files, and the
bundled data against the rules it was built by."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import sfr_ds

from sfr_ds.data.prepare import INSTRUCTIONS, from_beir, from_labelled, from_sts
from sfr_ds.data.records import RecordError, read_jsonl
from sfr_ds.data.sources import SourceArgsError, SourcesError, convert_all, gather, sources_from_yaml

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BUNDLE = Path(__file__).resolve().parents[1] / "sfr_ds" / "resources" / "data"
BUNDLED = ("scifact_train.jsonl", "stsb_train.jsonl", "banking77_train.jsonl", "tiny.jsonl")


@pytest.fixture(scope="module")
def data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


# --- BEIR -----------------------------------------------------------------------------------


def test_from_beir_scifact_train_matches_qrels_and_corpus(data):
    corpus = {}
    with open(data / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            corpus[d["_id"]] = (d["title"].strip() + " " + d["text"].strip()).strip()
    with open(data / "scifact" / "queries.jsonl", encoding="utf-8") as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f)}
    judged: dict[str, list[tuple[str, int]]] = {}
    with open(data / "scifact" / "qrels" / "train.tsv", encoding="utf-8") as f:
        for qid, did, score in (line.rstrip("\n").split("\t") for line in list(f)[1:]):
            judged.setdefault(qid, []).append((did, int(score)))
    relevant = {
        q: [d for d, s in pairs if s > 0]
        for q, pairs in judged.items()
        if q in queries and all(d in corpus for d, _ in pairs) and any(s > 0 for _, s in pairs)
    }

    records, report = from_beir(data / "scifact", "train", "scifact")

    assert len(records) == len(relevant) == report.written
    assert report.skipped == 0
    for r in records:
        qid = r.extra["query_id"]
        assert r.query == queries[qid]
        assert r.extra["pos_ids"] == relevant[qid]
        assert r.pos == [corpus[d] for d in relevant[qid]]
        assert r.neg == [] and r.task_type == "retrieval"
        assert r.instruction == INSTRUCTIONS["scifact"]


def _beir_dir(root: Path, corpus_lines: list[str], qrels_rows: list[str]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n", encoding="utf-8")
    queries = [{"_id": q, "text": f"claim {q}"} for q in ("q1", "q2", "q3", "q4")]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(row + "\n" for row in qrels_rows)
    )
    return root


def test_from_beir_skips_queries_by_reason(tmp_path):
    docs = [
        json.dumps({"_id": "d1", "title": " T ", "text": "body one"}),
        json.dumps({"_id": "d2", "title": "", "text": "body two"}),
    ]
    rows = ["q1\td1\t1", "q1\td2\t1", "q2\td1\t0", "q3\tmissing\t1", "q3\td1\t1", "q9\td1\t1"]
    records, report = from_beir(_beir_dir(tmp_path, docs, rows), "train", "x", "inst")

    assert [r.pos for r in records] == [["T body one", "body two"]]
    assert report.written == 1 and report.skipped == 3
    assert report.reasons == {"no relevant doc": 1, "unknown doc id": 1, "unknown query id": 1}


def test_from_beir_malformed_corpus_line_names_file_and_line(tmp_path):
    docs = [json.dumps({"_id": "d1", "title": "", "text": "ok"}), '{"_id": "d2", "text": ']
    root = _beir_dir(tmp_path, docs, ["q1\td1\t1"])
    with pytest.raises(RecordError, match=r"corpus\.jsonl:2: not valid JSON"):
        from_beir(root, "train", "x", "inst")


def test_unknown_dataset_needs_an_instruction(tmp_path):
    root = _beir_dir(tmp_path, [json.dumps({"_id": "d1", "text": "ok"})], ["q1\td1\t1"])
    with pytest.raises(ValueError, match="no built-in instruction"):
        from_beir(root, "train", "not-a-dataset")


# --- STS ------------------------------------------------------------------------------------


def test_from_sts_keeps_high_pairs_in_both_directions(data):
    path = data / "stsbenchmark" / "sts-train.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    high = [(r[5].strip(), r[6].strip()) for r in rows if float(r[4]) >= 4.0]

    records, report = from_sts(path, "stsb")

    assert len(records) == 2 * len(high) == report.written
    assert report.reasons == {"below min_score": len(rows) - len(high)}
    assert all(r.task_type == "sts" and r.neg == [] for r in records)
    assert [(r.query, r.pos[0]) for r in records[0::2]] == high
    assert [(r.pos[0], r.query) for r in records[1::2]] == high


def test_from_sts_min_score_and_extra_columns(tmp_path):
    path = tmp_path / "sts.csv"
    path.write_text(
        'g\tf\t2012\t0001\t4.5\tA "quoted" cat.\tA cat.\tlicence\textra\n'
        "g\tf\t2012\t0002\t3.9\tA dog.\tA cat.\n",
        encoding="utf-8",
    )
    records, report = from_sts(path, "stsb", min_score=4.0)
    assert [(r.query, r.pos) for r in records] == [
        ('A "quoted" cat.', ["A cat."]),
        ("A cat.", ['A "quoted" cat.']),
    ]
    assert report.reasons == {"below min_score": 1}


# --- labels as documents --------------------------------------------------------------------


def test_from_labelled_banking77_labels_as_documents(data):
    path = data / "banking77" / "train.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    n_labels = len({r["category"] for r in rows})

    records, report = from_labelled(path, "banking77")

    assert n_labels == 77 and len(records) == len(rows) == report.written
    for r, row in zip(records, rows):
        truth = row["category"].replace("_", " ")
        assert r.query == row["text"].strip()
        assert r.pos == [truth] and truth not in r.neg
        assert len(r.neg) == len(set(r.neg)) == n_labels - 1
        assert r.task_type == "classification" and r.loss_mode == "own_negatives"


def test_from_labelled_sampled_negatives_are_deterministic(data):
    path = data / "banking77" / "train.csv"
    a, _ = from_labelled(path, "banking77", n_neg=7, seed=3)
    b, _ = from_labelled(path, "banking77", n_neg=7, seed=3)
    c, _ = from_labelled(path, "banking77", n_neg=7, seed=4)
    assert [r.neg for r in a] == [r.neg for r in b] != [r.neg for r in c]
    assert all(len(r.neg) == 7 and r.pos[0] not in r.neg for r in a)


def test_from_labelled_label_text_and_task_type(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("sentence,topic\nhello,a_b\nbye,c\n", encoding="utf-8")
    records, _ = from_labelled(
        path,
        "x",
        "inst",
        task_type="clustering",
        text_field="sentence",
        label_field="topic",
        label_text={"a_b": "Alpha", "c": "Gamma"},
    )
    assert [(r.pos, r.neg) for r in records] == [(["Alpha"], ["Gamma"]), (["Gamma"], ["Alpha"])]
    with pytest.raises(ValueError, match="task_type"):
        from_labelled(path, "x", "inst", task_type="retrieval", text_field="sentence", label_field="topic")
    with pytest.raises(RecordError, match="lacks column"):
        from_labelled(path, "x", "inst")


def test_from_labelled_examples_draw_positives_and_negatives_by_class(data):
    """format examples (NV-Embed): the positive is another example of the anchor's class, each
    negative an example of another class (one per class); own-negatives records."""
    path = data / "banking77" / "train.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = [(r["text"].strip(), r["category"]) for r in csv.DictReader(f)]
    classes: dict[str, set[str]] = {}
    for text, label in rows:
        classes.setdefault(text, set()).add(label)
    records, report = from_labelled(path, "banking77", n_neg=7, seed=1, format="examples")
    assert len(records) == report.written == len(rows) and report.skipped == 0
    for r, (text, label) in zip(records, rows):
        assert r.query == text and r.extra["label"] == label and r.loss_mode == "own_negatives"
        assert r.pos[0] != text and label in classes[r.pos[0]]
        neg_classes = [classes[n] for n in r.neg]
        assert len(r.neg) == 7 and all(label not in c for c in neg_classes)
        assert len(set().union(*neg_classes)) >= 7  # seven different classes
    again, _ = from_labelled(path, "banking77", n_neg=7, seed=1, format="examples")
    other, _ = from_labelled(path, "banking77", n_neg=7, seed=2, format="examples")
    assert [r.to_json() for r in again] == [r.to_json() for r in records]
    assert [r.pos for r in other] != [r.pos for r in records] and [r.neg for r in other] != [
        r.neg for r in records
    ]


def test_from_labelled_formats_on_a_small_file(tmp_path):
    """labels: every class is a document of every record; examples: a class with one example is
    skipped and counted, and every other class gives one negative when n_neg is not set."""
    path = tmp_path / "l.csv"
    path.write_text("text,category\na1,a\na2,a\nb1,b\nb2,b\nb3,b\nc1,c\n", encoding="utf-8")
    labels, report = from_labelled(path, "x", "inst")
    assert report.written == 6 and all(sorted(r.pos + r.neg) == ["a", "b", "c"] for r in labels)
    ex, report = from_labelled(path, "x", "inst", task_type="clustering", format="examples")
    assert report.written == 5 and report.reasons == {"no other example of its class": 1}
    assert "c1" not in [r.query for r in ex]
    for r in ex:
        own = r.query[0]
        assert r.pos[0][0] == own and r.pos[0] != r.query and r.task_type == "clustering"
        assert sorted(n[0] for n in r.neg) == sorted({"a", "b", "c"} - {own})
    with pytest.raises(ValueError, match="format must be one of"):
        from_labelled(path, "x", "inst", format="prose")


def test_prepare_command_writes_examples_and_keeps_labels_the_default(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("text,category\na1,a\na2,a\nb1,b\nb2,b\n", encoding="utf-8")
    args = ("prepare", "--labelled", path, "--dataset", "banking77")
    sfr_ds(*args, "--out", tmp_path / "default.jsonl")
    sfr_ds(*args, "--format", "labels", "--out", tmp_path / "labels.jsonl")
    p = sfr_ds(*args, "--format", "examples", "--out", tmp_path / "examples.jsonl")
    assert "4 written, 0 skipped" in p.stdout
    assert (tmp_path / "default.jsonl").read_bytes() == (tmp_path / "labels.jsonl").read_bytes()
    pairs = {"a1": "a2", "a2": "a1", "b1": "b2", "b2": "b1"}  # each class has exactly two
    for r in read_jsonl(tmp_path / "examples.jsonl"):
        assert r.pos == [pairs[r.query]] and len(r.neg) == 1 and r.neg[0][0] != r.query[0]
        assert r.loss_mode == "own_negatives"


# --- sources (sfr-ds prepare) ---------------------------------------------------------------


def test_sources_yaml_lists_every_problem_at_once(tmp_path):
    spec = tmp_path / "sources.yaml"
    spec.write_text("colour: red\nsources:\n  - {beir: x, bogus: 1}\n  - {sts: a.csv, labelled: b.csv}\n")
    with pytest.raises(SourcesError) as e:
        sources_from_yaml(str(spec))
    assert str(e.value).splitlines() == [
        f"{spec}:",
        "  - unknown top-level key 'colour' (expected sources, instructions)",
        "  - source 1 (beir): unknown key(s) ['bogus']; allowed: ['split', 'dataset', 'instruction']",
        "  - source 1 (beir): missing key(s) ['split', 'dataset']",
        "  - source 2: needs exactly one of ['beir', 'sts', 'labelled'], got {'sts': 'a.csv', 'labelled': "
        "'b.csv'}",
    ]


def test_sources_read_relative_paths_from_the_yaml_and_take_instruction_overrides(tmp_path):
    (tmp_path / "l.csv").write_text("text,category\nhello,a\nbye,b\n", encoding="utf-8")
    spec = tmp_path / "sub" / "sources.yaml"
    spec.parent.mkdir()
    spec.write_text("instructions: {x: from yaml}\nsources:\n  - {labelled: ../l.csv, dataset: x}\n")
    sources, instructions = gather(str(spec), {}, ("x=from cli",))
    reports: list[str] = []
    records = convert_all(sources, instructions, reports.append)
    assert Path(sources[0].path).resolve() == (tmp_path / "l.csv").resolve()
    assert [r.instruction for r in records] == ["from cli", "from cli"] and len(reports) == 1
    with pytest.raises(SourceArgsError, match="DATASET=TEXT"):
        gather(str(spec), {}, ("no-equals-sign",))


@pytest.mark.integration
def test_prepare_cli_shows_library_errors_as_one_clean_error(tmp_path):
    spec = tmp_path / "sources.yaml"
    spec.write_text("sources: []\n")
    p = sfr_ds("prepare", spec, "--out", tmp_path / "o.jsonl", check=False)
    assert p.returncode == 1 and p.stderr == f"Error: {spec}:\n  - no sources listed\n"
    p = sfr_ds("prepare", "--sts", spec, "--labelled", spec, "--out", tmp_path / "o.jsonl", check=False)
    assert p.returncode == 2 and "name one source on the command line" in p.stderr
    assert "Traceback" not in p.stderr


# --- bundled data ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_files_are_valid_records(name):
    records = read_jsonl(BUNDLE / name)
    assert all(not set(r.neg) & set(r.pos) for r in records)


def test_bundled_scifact_negatives_respect_window_and_positives():
    records = read_jsonl(BUNDLE / "scifact_train.jsonl")
    assert 350 <= len(records) <= 450
    for r in records:
        assert len(r.neg) == 7
        assert all(30 <= rank < 100 for rank in r.extra["neg_ranks"])
        assert not set(r.extra["neg_ids"]) & set(r.extra["pos_ids"])
        assert not set(r.neg) & set(r.pos)


def test_bundled_tiny_mixes_three_task_types():
    records = read_jsonl(BUNDLE / "tiny.jsonl")
    assert Counter(r.task_type for r in records) == {"retrieval": 32, "sts": 32, "classification": 32}
    assert all(len(r.neg) >= 3 for r in records)


def test_mini_eval_suite_shares_no_text_with_the_training_bundle(data):
    """The `mini` suite is held out: no query, document or sentence of it is a training text, and
    no SciFact-mini abstract is (by id) a training positive or negative. SciFact's train and test
    claims share one corpus, so the judged abstracts of test claims must be filtered for this."""
    train_texts, train_ids = set(), set()
    for name in BUNDLED[:3]:
        for r in read_jsonl(BUNDLE / name):
            train_texts.update([r.query, *r.pos, *r.neg])
            train_ids.update(map(str, r.extra.get("pos_ids", []) + r.extra.get("neg_ids", [])))
    ev = BUNDLE / "eval"
    with open(ev / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        corpus = {d["_id"]: d["text"] for d in map(json.loads, f)}
    with open(ev / "scifact" / "queries.jsonl", encoding="utf-8") as f:
        claims = {q["_id"]: q["text"] for q in map(json.loads, f)}
    with open(ev / "scifact" / "qrels" / "test.tsv", encoding="utf-8") as f:
        judged = [line.split("\t")[:2] for line in list(f)[1:]]
    with open(data / "scifact" / "qrels" / "test.tsv", encoding="utf-8") as f:
        source_judged = {tuple(line.split("\t")[:2]) for line in list(f)[1:]}
    assert judged and all(tuple(j) in source_judged and j[1] in corpus for j in judged)
    assert not set(corpus) & train_ids
    with open(ev / "stsbenchmark" / "sts-test.csv", encoding="utf-8") as f:
        sentences = [s for line in f for s in line.rstrip("\n").split("\t")[5:7]]
    with open(ev / "pubmedqa" / "rerank.jsonl", encoding="utf-8") as f:
        pubmed = [t for r in map(json.loads, f) for t in [r["query"], *r["positive"], *r["negative"]]]
    banking = [
        r["text"]
        for split in ("clustering", "test", "train")
        for r in csv.DictReader((ev / "banking77" / f"{split}.csv").read_text(encoding="utf-8").splitlines())
    ]
    eval_texts = [*corpus.values(), *claims.values(), *sentences, *pubmed, *banking]
    assert len(eval_texts) > 2000 and not set(eval_texts) & train_texts
