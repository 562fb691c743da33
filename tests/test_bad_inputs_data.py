"""A user's mistakes in the data commands (``prepare``, ``mine``, training records) are refused in one
clear message naming the file and line or field, before any work, and no file the user has changes.

Each case below builds one bad input in its own folder and says what the message must name; the
harness (``bad_inputs.refused``) runs the command and checks the exit status, the absence of a
traceback, the message and that every file that was there is byte for byte as it was. Nearly all
fail before torch is imported, so a case costs a fraction of a second.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from bad_inputs import refused
from conftest import TINY, proc_env, sfr_ds

from sfr_ds.data.records import read_jsonl

pytestmark = pytest.mark.integration

DOCS = [
    {"_id": "d1", "title": "Iron", "text": "Iron deficiency causes fatigue."},
    {"_id": "d2", "title": "", "text": "Canberra is the capital of Australia."},
    {"_id": "d3", "text": "Water boils at a lower temperature at altitude."},
]
QUERIES = [{"_id": "q1", "text": "signs of anaemia"}, {"_id": "q2", "text": "capital of australia"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"
STS = "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.\n"
LABELLED = "text,category\nmy card has not arrived,card_arrival\nwhat is my balance,balance\n"
RECORD = {
    "query": "signs of anaemia",
    "pos": ["Iron Iron deficiency causes fatigue."],
    "neg": [],
    "task_type": "retrieval",
    "dataset": "scifact",
    "instruction": "Given a claim, find evidence",
    "query_id": "q1",
    "pos_ids": ["d1"],
}
BAD_UTF8 = b"\xff\xfe"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def lines(content: list | str | bytes) -> str | bytes:
    """A file's content, given as it is or as a list of its JSON lines (records or raw text)."""
    return jsonl(content) if isinstance(content, list) else content


def beir(root: Path, corpus: str | bytes | None = None, queries=None, qrels=None) -> Path:
    """A small BEIR folder; any part may be replaced by bad content."""
    write(root / "corpus.jsonl", jsonl(DOCS) if corpus is None else corpus)
    write(root / "queries.jsonl", jsonl(QUERIES) if queries is None else queries)
    write(root / "qrels" / "train.tsv", QRELS if qrels is None else qrels)
    return root


def with_bad_byte(text: str, line: int) -> bytes:
    """``text`` with bytes that are not UTF-8 in the middle of 1-based ``line``."""
    lines = text.encode().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1][:5] + BAD_UTF8 + lines[line - 1][5:]
    return b"".join(lines)


Case = Callable[[Path], tuple[list, list]]  # folder -> (command line, what the message must say)
PREPARE: dict[str, Case] = {}
MINE: dict[str, Case] = {}
TRAIN: dict[str, Case] = {}
AUDIT: dict[str, Case] = {}


def case(table: dict[str, Case]):
    def register(f: Case) -> Case:
        table[f.__name__] = f
        return f

    return register


def says(needles: list[str], **paths: Path) -> list[str]:
    """``needles`` with the case's paths for ``{t}``, ``{path}``, ``{spec}``, ``{train}``, ``{docs}``."""
    return [needle.format(**paths) for needle in needles]


def sts_args(t: Path, content: str | bytes = STS, *extra) -> tuple[list, Path]:
    sts = write(t / "sts.csv", content)
    return ["--sts", sts, "--dataset", "stsb", "--out", t / "out.jsonl", *extra], sts


def labelled_args(t: Path, content: str | bytes = LABELLED) -> tuple[list, Path]:
    f = write(t / "labelled.csv", content)
    return ["--labelled", f, "--dataset", "banking77", "--out", t / "out.jsonl"], f


# --- prepare: an output that would destroy a file -------------------------------------------------


@case(PREPARE)
def out_is_the_sts_input(t):
    sts = write(t / "sts.csv", STS)
    return ["--sts", sts, "--dataset", "stsb", "--out", sts], [f"{sts}: is one of the inputs"]


@case(PREPARE)
def out_is_the_labelled_input_even_with_overwrite(t):
    f = write(t / "l.csv", LABELLED)
    return ["--labelled", f, "--dataset", "banking77", "--out", f, "--overwrite"], [
        f"{f}: is one of the inputs"
    ]


@case(PREPARE)
def format_without_labelled(t):
    sts = write(t / "sts.csv", STS)
    return ["--sts", sts, "--dataset", "stsb", "--format", "examples", "--out", t / "o.jsonl"], [
        "--format applies to --labelled"
    ]


@case(PREPARE)
def labelled_examples_without_a_class_of_two(t):
    args, f = labelled_args(t)  # two rows, two classes: no example has a same-class partner
    return [*args, "--format", "examples"], [f"{f} (labelled source): format examples needs a class"]


@case(PREPARE)
def out_is_the_beir_corpus(t):
    root = beir(t / "scifact")
    return ["--beir", root, "--out", root / "corpus.jsonl"], [
        f"{root / 'corpus.jsonl'}: is one of the inputs"
    ]


@case(PREPARE)
def out_is_the_beir_queries(t):
    root = beir(t / "scifact")
    return ["--beir", root, "--out", root / "queries.jsonl", "--overwrite"], [
        "queries.jsonl: is one of the inputs"
    ]


@case(PREPARE)
def out_is_the_beir_qrels(t):
    root = beir(t / "scifact")
    qrels = root / "qrels" / "train.tsv"
    return ["--beir", root, "--out", qrels, "--overwrite"], [f"{qrels}: is one of the inputs"]


@case(PREPARE)
def out_is_the_sources_yaml(t):
    write(t / "sts.csv", STS)
    spec = write(t / "sources.yaml", "sources:\n  - {sts: sts.csv, dataset: stsb}\n")
    return [spec, "--out", spec, "--overwrite"], [f"{spec}: is one of the inputs"]


@case(PREPARE)
def out_is_a_source_the_yaml_names(t):
    sts = write(t / "data" / "sts.csv", STS)
    spec = write(t / "sources.yaml", "sources:\n  - {sts: data/sts.csv, dataset: stsb}\n")
    return [spec, "--out", sts, "--overwrite"], [f"{sts}: is one of the inputs"]


@case(PREPARE)
def out_is_the_input_through_a_link(t):
    sts = write(t / "sts.csv", STS)
    (t / "link.csv").symlink_to(sts)
    args = ["--sts", sts, "--dataset", "stsb", "--out", t / "link.csv", "--overwrite"]
    return args, [f"{t / 'link.csv'}: is the same file as the input {sts}"]


@case(PREPARE)
def out_is_the_input_spelled_another_way(t):
    sts = write(t / "sts.csv", STS)
    (t / "sub").mkdir()
    other = t / "sub" / ".." / "sts.csv"
    return ["--sts", sts, "--dataset", "stsb", "--out", other, "--overwrite"], [
        f"{other}: is the same file as"
    ]


@case(PREPARE)
def out_exists(t):
    old = write(t / "old.jsonl", jsonl([RECORD]))
    args, _ = sts_args(t)
    return [*args[:-1], old], [f"{old}: exists", "--overwrite"]


@case(PREPARE)
def out_is_a_folder(t):
    (t / "folder").mkdir()
    args, _ = sts_args(t)
    return [*args[:-1], t / "folder"], ["folder", "is a directory"]


# --- prepare: bytes that are not UTF-8, folders, bad rows -----------------------------------------

# prepare --sts or --labelled of a bad file: name -> (the flag, the file, what the message says)
BAD_TABLES = {
    "sts_not_utf8": (
        "sts",
        with_bad_byte(STS + STS.replace("0001", "0002"), 2),
        ["{path}:2: not valid UTF-8"],
    ),
    "sts_short_row": ("sts", STS + "a\tb\tc\n", ["{path}:2: expected genre"]),
    "sts_score_not_a_number": ("sts", STS.replace("5.000", "high"), ["{path}:1: expected genre"]),
    "labelled_not_utf8": ("labelled", with_bad_byte(LABELLED, 3), ["{path}:3: not valid UTF-8"]),
    "labelled_header_not_utf8": ("labelled", with_bad_byte(LABELLED, 1), ["{path}:1: not valid UTF-8"]),
    "labelled_without_the_label_column": (
        "labelled",
        "text,intent\nhello,greet\n",
        ["{path}:1: header", "category"],
    ),
    "labelled_short_row": ("labelled", LABELLED + "only text\n", ["{path}:4: row has fewer columns"]),
}


def bad_table(flag: str, content: str | bytes, needles: list[str]) -> Case:
    """The case: ``content`` given to prepare as its ``--sts`` or ``--labelled`` file."""

    def build(t: Path) -> tuple[list, list]:
        args, path = (sts_args if flag == "sts" else labelled_args)(t, content)
        return args, says(needles, path=path)

    return build


# prepare --beir with one file replaced: name -> (the file, its content (a list: its JSON lines), message)
BAD_BEIR_FILES = {
    "beir_corpus_not_utf8": ("corpus", with_bad_byte(jsonl(DOCS), 3), ["{path}:3: not valid UTF-8"]),
    "beir_queries_not_utf8": ("queries", with_bad_byte(jsonl(QUERIES), 2), ["{path}:2: not valid UTF-8"]),
    "beir_qrels_not_utf8": ("qrels", with_bad_byte(QRELS, 3), ["{path}:3: not valid UTF-8"]),
    "beir_corpus_repeats_an_id": (
        "corpus",
        [*DOCS, {"_id": "d2", "text": "again"}],
        ["{path}:4: _id 'd2' repeated", "{path}:2"],
    ),
    "beir_queries_repeat_an_id": ("queries", [*QUERIES, QUERIES[0]], ["{path}:3: _id 'q1' repeated"]),
    "beir_corpus_line_not_json": (
        "corpus",
        [DOCS[0], '{"_id": "d9", "text": '],
        ["{path}:2: not valid JSON"],
    ),
    "beir_corpus_line_not_an_object": ("corpus", [*DOCS, "[1, 2]"], ["{path}:4: expected a JSON object"]),
    "beir_corpus_without_id": ("corpus", [{"title": "x", "text": "y"}], ["{path}:1: field '_id'"]),
    "beir_corpus_text_not_a_string": ("corpus", [{"_id": "d1", "text": ["a"]}], ["{path}:1: field 'text'"]),
    "beir_qrels_short_row": ("qrels", QRELS + "q3\td3\n", ["{path}:4: expected"]),
}
BEIR_FILES = {"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels/train.tsv"}


def bad_beir_file(part: str, content: str | bytes | list, needles: list[str]) -> Case:
    """The case: a good BEIR folder whose ``part`` then holds ``content``."""

    def build(t: Path) -> tuple[list, list]:
        root = beir(t / "scifact")
        path = write(root / BEIR_FILES[part], lines(content))
        return ["--beir", root, "--out", t / "o.jsonl"], says(needles, path=path)

    return build


PREPARE.update({name: bad_table(*mistake) for name, mistake in BAD_TABLES.items()})
PREPARE.update({name: bad_beir_file(*mistake) for name, mistake in BAD_BEIR_FILES.items()})


@case(PREPARE)
def beir_corpus_is_a_folder(t):
    root = t / "scifact"
    (root / "corpus.jsonl").mkdir(parents=True)
    write(root / "queries.jsonl", jsonl(QUERIES))
    write(root / "qrels" / "train.tsv", QRELS)
    return ["--beir", root, "--out", t / "o.jsonl"], [f"{root / 'corpus.jsonl'}: is a folder"]


@case(PREPARE)
def beir_without_corpus(t):
    root = beir(t / "scifact")
    (root / "corpus.jsonl").unlink()
    return ["--beir", root, "--out", t / "o.jsonl"], [f"{root / 'corpus.jsonl'}: no such file"]


@case(PREPARE)
def beir_without_the_split(t):
    root = beir(t / "scifact")
    return ["--beir", root, "--split", "dev", "--out", t / "o.jsonl"], [f"{root / 'qrels' / 'dev.tsv'}"]


@case(PREPARE)
def unknown_dataset_without_instruction(t):
    f = write(t / "l.csv", LABELLED)
    return ["--labelled", f, "--dataset", "my-intents", "--out", t / "o.jsonl"], [
        "'my-intents'",
        "instruction",
    ]


@case(PREPARE)
def instruction_without_equals(t):
    args, _ = sts_args(t, STS, "--instruction", "stsb")
    return args, ["--instruction expects DATASET=TEXT", "'stsb'"]


@case(PREPARE)
def labelled_without_dataset(t):
    f = write(t / "l.csv", LABELLED)
    return ["--labelled", f, "--out", t / "o.jsonl"], ["--labelled needs --dataset"]


@case(PREPARE)
def sts_path_is_a_folder(t):
    (t / "sts").mkdir()
    return ["--sts", t / "sts", "--dataset", "stsb", "--out", t / "o.jsonl"], ["sts", "is a directory"]


# --- prepare: the sources YAML --------------------------------------------------------------------


def sources(*lines: str) -> str:
    """A sources YAML listing ``lines`` (each a source) and nothing else."""
    return "sources:\n" + "".join(f"  - {line}\n" for line in lines)


# the sources YAML: name -> (its text, what the message says). Beside it lie what it may name: a.csv
# (STS pairs), l.csv (labelled rows), corpus.jsonl and an empty folder data/.
BAD_YAML = {
    "yaml_source_is_a_folder": (sources("{sts: data, dataset: stsb}"), ["{t}/data: is a folder"]),
    "yaml_source_missing": (sources("{sts: nowhere.csv, dataset: stsb}"), ["{t}/nowhere.csv: no such file"]),
    "yaml_beir_source_is_a_file": (
        sources("{beir: corpus.jsonl, split: train, dataset: scifact}"),
        ["{t}/corpus.jsonl: not a folder"],
    ),
    "yaml_syntax_error": ("sources:\n  - {sts: a.csv, dataset: stsb\n", ["{spec}:3"]),
    "yaml_tab_indent": ("sources:\n\t- {sts: a.csv, dataset: stsb}\n", ["{spec}:2", "tabs"]),
    "yaml_repeated_key": ("sources: []\ninstructions: {}\nsources: []\n", ["{spec}:3", "'sources' repeated"]),
    "yaml_not_utf8": (b"sources:\n  - {sts: \xff.csv, dataset: stsb}\n", ["{spec}: not UTF-8"]),
    "yaml_unknown_source_key": (
        sources("{sts: a.csv, dataset: stsb, min_scor: 3}"),
        ["{spec}:", "source 1 (sts): unknown key(s) ['min_scor']"],
    ),
    "yaml_top_level_list": ("- {sts: a.csv, dataset: stsb}\n", ["{spec}: the top level must be a mapping"]),
    "yaml_sources_not_a_list": ("sources: {sts: a.csv}\n", ["{spec}:", "sources must be a list"]),
    "yaml_source_not_a_mapping": (sources("a.csv"), ["{spec}:", "source 1: needs exactly one of"]),
    "yaml_min_score_not_a_number": (
        sources("{sts: a.csv, dataset: stsb, min_score: high}"),
        ["{spec}:", "source 1 (sts): min_score must be float, got 'high'"],
    ),
    "yaml_n_neg_not_a_number": (
        sources("{labelled: l.csv, dataset: banking77, n_neg: true}"),
        ["{spec}:", "n_neg must be int | None, got True"],
    ),
    "yaml_negative_n_neg": (
        sources("{labelled: l.csv, dataset: banking77, n_neg: -1}"),
        ["{t}/l.csv (labelled source): n_neg must be >= 0"],
    ),
    "yaml_unknown_labelled_format": (
        sources("{labelled: l.csv, dataset: banking77, format: prose}"),
        ["{t}/l.csv (labelled source): format must be one of ['labels', 'examples'], got 'prose'"],
    ),
    "yaml_path_not_a_string": (
        sources("{sts: 5, dataset: stsb}"),
        ["{spec}:", "source 1 (sts): the path must be a string"],
    ),
    "yaml_instructions_not_a_mapping": (
        "instructions: [a]\n" + sources("{sts: a.csv, dataset: stsb}"),
        ["{spec}:", "instructions must map dataset names"],
    ),
}


def bad_yaml(text: str | bytes, needles: list[str]) -> Case:
    """The case: ``text`` as sources.yaml, beside every file its sources may name."""

    def build(t: Path) -> tuple[list, list]:
        write(t / "a.csv", STS)
        write(t / "l.csv", LABELLED)
        write(t / "corpus.jsonl", jsonl(DOCS))
        (t / "data").mkdir()
        spec = write(t / "sources.yaml", text)
        return [spec, "--out", t / "out.jsonl"], says(needles, t=t, spec=spec)

    return build


PREPARE.update({name: bad_yaml(*mistake) for name, mistake in BAD_YAML.items()})


@pytest.mark.parametrize("name", sorted(PREPARE))
def test_prepare_refuses(name, tmp_path):
    args, needles = PREPARE[name](tmp_path)
    refused("prepare", *args, where=tmp_path, says=needles, timeout=60)
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob("**/.*.tmp"))


# --- mine -----------------------------------------------------------------------------------------


def mine_setup(t: Path, rows=None, corpus: str | bytes | None = None) -> tuple[Path, Path]:
    """(training JSONL, corpus.jsonl) that mine would accept, unless replaced."""
    train = write(t / "train.jsonl", jsonl([RECORD] if rows is None else rows))
    docs = write(t / "corpus.jsonl", jsonl(DOCS) if corpus is None else corpus)
    return train, docs


def mine_args(train, corpus, out, *extra) -> list:
    return [train, "--corpus", corpus, "--teacher", "bm25", "--out", out, "--no-progress", *extra]


def without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


# mine of a bad training file or corpus: name -> (the file, its content (a list: its JSON lines), message)
BAD_MINE_FILES = {
    "mine_input_not_utf8": (
        "train",
        with_bad_byte(jsonl([RECORD, RECORD]), 2),
        ["{train}:2: not valid UTF-8"],
    ),
    "mine_input_line_not_json": ("train", [RECORD, '{"query": '], ["{train}:2: not valid JSON"]),
    "mine_input_record_without_pos": (
        "train",
        [without(RECORD, "pos")],
        ["{train}:1: field 'pos' is missing"],
    ),
    "mine_input_pos_ids_not_aligned": (
        "train",
        [RECORD, dict(RECORD, pos_ids=["d1", "d2"])],
        ["{train}:2: field 'pos_ids'"],
    ),
    "mine_input_empty": ("train", [], ["{train}: holds no records"]),
    "mine_pos_ids_not_in_corpus": (
        "train",
        [dict(RECORD, pos_ids=["d7"])],
        ["{docs} ", "{train}:1: scifact query 'q1': pos_ids ['d7']"],
    ),
    "mine_records_without_pos_ids": (
        "train",
        [without(RECORD, "pos_ids")],
        ["{docs} ", "{train}:1: scifact query 'q1': no pos_ids"],
    ),
    "mine_corpus_not_utf8": ("corpus", with_bad_byte(jsonl(DOCS), 2), ["{docs}:2: not valid UTF-8"]),
    "mine_corpus_repeats_an_id": ("corpus", [*DOCS, DOCS[0]], ["{docs}:4: _id 'd1' repeated"]),
    "mine_corpus_without_text": ("corpus", [{"_id": "d1", "text": " "}], ["{docs}: holds no documents"]),
}


def bad_mine_file(file: str, content: str | bytes | list, needles: list[str]) -> Case:
    """The case: mine of a good training file and corpus, then the ``file`` one holding ``content``."""

    def build(t: Path) -> tuple[list, list]:
        train, docs = mine_setup(t)
        write(train if file == "train" else docs, lines(content))
        return mine_args(train, docs, t / "o.jsonl"), says(needles, train=train, docs=docs)

    return build


# mine with a bad option: name -> (the option and its values, what the message says)
BAD_MINE_OPTIONS = {
    "mine_no_record_of_the_dataset": (("--dataset", "nfcorpus"), ["no record to mine", "nfcorpus"]),
    "mine_window_upside_down": (("--range", 100, 30), ["range_min < range_max"]),
    "mine_k_zero": (("--k", 0), ["--k", "0"]),
    "mine_negative_margin": (("--margin", -1), ["margin must be > 0"]),
    "mine_cap_unknown_kind": (("--cap", "percent:0.9"), ["'--cap'", "relative or absolute"]),
    "mine_cap_not_a_number": (("--cap", "relative:high"), ["'--cap'", "relative:ALPHA or absolute:MARGIN"]),
    "mine_cap_relative_zero": (("--cap", "relative:0"), ["'--cap'", "a relative cap must be > 0"]),
    "mine_cap_absolute_negative": (("--cap", "absolute:-0.1"), ["'--cap'", "an absolute cap must be >= 0"]),
    "mine_cap_and_margin": (("--cap", "relative:0.9", "--margin", 0.9), ["--cap or --margin"]),
    "mine_padded_and_max_tokens": (("--padded", "--max-tokens", 512), ["--padded and --max-tokens"]),
    "mine_max_tokens_zero": (("--max-tokens", 0), ["--max-tokens", "0"]),
}


def bad_mine_option(option: tuple, needles: list[str]) -> Case:
    """The case: mine of good files with ``option`` added."""

    def build(t: Path) -> tuple[list, list]:
        train, docs = mine_setup(t)
        return mine_args(train, docs, t / "o.jsonl", *option), needles

    return build


# mine --overwrite, --out on an input: name -> ((training file, corpus) -> (--corpus, --out), message)
OUT_ON_AN_INPUT = {
    "mine_out_is_the_input": (lambda train, docs: (docs, train), ["{train}: is one of the inputs"]),
    "mine_out_is_the_corpus": (lambda train, docs: (docs, docs), ["{docs}: is one of the inputs"]),
    "mine_out_is_the_corpus_of_a_folder": (
        lambda train, docs: (docs.parent, docs),
        ["{docs}: is one of the inputs"],
    ),
}


def out_on_an_input(corpus_and_out: Callable[[Path, Path], tuple[Path, Path]], needles: list[str]) -> Case:
    """The case: mine --overwrite of good files, with the ``--corpus`` and ``--out`` chosen from them."""

    def build(t: Path) -> tuple[list, list]:
        train, docs = mine_setup(t)
        corpus, out = corpus_and_out(train, docs)
        return mine_args(train, corpus, out, "--overwrite"), says(needles, train=train, docs=docs)

    return build


MINE.update({name: bad_mine_file(*mistake) for name, mistake in BAD_MINE_FILES.items()})
MINE.update({name: bad_mine_option(*mistake) for name, mistake in BAD_MINE_OPTIONS.items()})
MINE.update({name: out_on_an_input(*mistake) for name, mistake in OUT_ON_AN_INPUT.items()})


@case(MINE)
def mine_out_is_the_input_through_a_link(t):
    train, docs = mine_setup(t)
    (t / "mined.jsonl").symlink_to(train)
    return mine_args(train, docs, t / "mined.jsonl", "--overwrite"), [
        f"mined.jsonl: is the same file as the input {train}"
    ]


@case(MINE)
def mine_out_exists(t):
    train, docs = mine_setup(t)
    old = write(t / "mined.jsonl", jsonl([RECORD]))
    return mine_args(train, docs, old), [f"{old}: exists", "--overwrite"]


@case(MINE)
def mine_out_inside_the_teacher(t):
    train, docs = mine_setup(t)
    (t / "run" / "final").mkdir(parents=True)
    out = t / "run" / "final" / "mined.jsonl"
    args = [train, "--corpus", docs, "--teacher", f"self:{t / 'run'}", "--out", out]
    return args, [f"{out}: lies inside the input"]


@case(MINE)
def mine_input_is_a_folder(t):
    _, docs = mine_setup(t)
    (t / "data.jsonl").mkdir()
    return mine_args(t / "data.jsonl", docs, t / "o.jsonl"), ["data.jsonl", "is a directory"]


@case(MINE)
def mine_corpus_folder_without_corpus(t):
    train, _ = mine_setup(t)
    (t / "beir").mkdir()
    return mine_args(train, t / "beir", t / "o.jsonl"), [f"{t / 'beir' / 'corpus.jsonl'}: no such file"]


@case(MINE)
def mine_corpus_missing(t):
    train, _ = mine_setup(t)
    return mine_args(train, t / "nowhere.jsonl", t / "o.jsonl"), [f"{t / 'nowhere.jsonl'}: no such file"]


@case(MINE)
def mine_teacher_folder_missing(t):
    train, docs = mine_setup(t)
    args = [train, "--corpus", docs, "--teacher", str(t / "no-model"), "--out", t / "o.jsonl"]
    return args, [f"{t / 'no-model'}", "no such model folder"]


@case(MINE)
def mine_self_teacher_not_a_run(t):
    train, docs = mine_setup(t)
    (t / "notrun").mkdir()
    args = [train, "--corpus", docs, "--teacher", f"self:{t / 'notrun'}", "--out", t / "o.jsonl"]
    return args, [f"{t / 'notrun'}: no sfr_ds.json"]


@pytest.mark.parametrize("name", sorted(MINE))
def test_mine_refuses(name, tmp_path):
    args, needles = MINE[name](tmp_path)
    refused("mine", *args, where=tmp_path, says=needles, timeout=120)
    assert not (tmp_path / "o.jsonl").exists()


# --- audit-negatives ------------------------------------------------------------------------------


@case(AUDIT)
def audit_labelled_missing(t):
    return ["--labelled", t / "missing.jsonl"], ["'--labelled'", "does not exist"]


@case(AUDIT)
def audit_out_is_the_labelled_input_even_with_overwrite(t):
    f = write(t / "l.jsonl", jsonl([RECORD]))
    return ["--labelled", f, "--out", f, "--overwrite"], [f"{f}: is one of the inputs"]


@case(AUDIT)
def audit_out_exists(t):
    f, out = write(t / "l.jsonl", jsonl([RECORD])), write(t / "o.md", "mine\n")
    return ["--labelled", f, "--out", out], [f"{out}: exists; pass --overwrite"]


@case(AUDIT)
def audit_k_zero(t):
    return ["--k", 0], ["'--k'", "x>=1"]


@pytest.mark.parametrize("name", sorted(AUDIT))
def test_audit_negatives_refuses(name, tmp_path):
    """One line, before any teacher runs; every file that was there is unchanged (``refused``)."""
    args, needles = AUDIT[name](tmp_path)
    refused("audit-negatives", *args, where=tmp_path, says=needles, timeout=60)


@pytest.mark.parametrize("module", ["faiss", "bm25s"])
def test_mine_without_the_mining_extra_says_how_to_install_it(module, tmp_path):
    """With faiss or bm25s not importable, one line says which and how to install the extra."""
    line = f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n"
    shim = write(tmp_path / "shim" / f"{module}.py", line)
    train, docs = mine_setup(tmp_path / "data")
    env = dict(proc_env(), PYTHONPATH=str(shim.parent))
    refused(
        "mine",
        *mine_args(train, docs, tmp_path / "o.jsonl"),
        where=tmp_path,
        env=env,
        says=[f"mining needs {module}", 'pip install -e ".[mining]"'],
        process=True,  # PYTHONPATH must hide the module from a fresh interpreter
    )


# --- training records -----------------------------------------------------------------------------


def train_args(t: Path, data: Path) -> list:
    return ["train", TINY, f"data.train_files=[{data}]", "--output-dir", t / "run"]


@case(TRAIN)
def train_file_not_utf8(t):
    f = write(t / "train.jsonl", with_bad_byte(jsonl([RECORD, RECORD, RECORD]), 3))
    return train_args(t, f), [f"{f}:3: not valid UTF-8"]


@case(TRAIN)
def train_file_is_a_folder(t):
    (t / "data.jsonl").mkdir()
    return train_args(t, t / "data.jsonl"), [f"{t / 'data.jsonl'} is a folder"]


@case(TRAIN)
def train_file_bad_task_type(t):
    f = write(t / "train.jsonl", jsonl([RECORD, dict(RECORD, task_type="retreival")]))
    return train_args(t, f), [f"{f}:2: field 'task_type'"]


@case(TRAIN)
def train_parquet_damaged(t):
    f = write(t / "train.parquet", b"PAR1 not really parquet")
    return train_args(t, f), [f"{f}: cannot be read as Parquet"]


@pytest.mark.parametrize("name", sorted(TRAIN))
def test_training_refuses(name, tmp_path):
    args, says = TRAIN[name](tmp_path)
    refused(*args, where=tmp_path, says=says, timeout=120)


def test_unknown_record_keys_warn_once_per_file_with_count_and_first_line(tmp_path, capsys):
    """A typo such as ``pos_idz`` is kept but never read: one warning line per file, naming how many
    records hold unknown keys and the first ``file:line``; the known keys never warn."""
    known = dict(RECORD, neg=["n"], neg_ids=["d3"], neg_scores=[0.5], neg_ranks=[30], pair_id="p", score=4.0)
    rows = [known, dict(RECORD, pos_idz=["d1"]), known, dict(RECORD, pos_idz=["d1"], colour="red")]
    f = write(tmp_path / "train.jsonl", jsonl(rows))
    assert len(read_jsonl(f)) == 4 and len(read_jsonl(f)) == 4  # read twice: warned once
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert f"{f}: 2 record(s)" in lines[0] and f"(first: {f}:2)" in lines[0] and "'pos_idz'" in lines[0]
    clean = write(tmp_path / "clean.jsonl", jsonl([known, dict(RECORD, label="x")]))
    read_jsonl(clean)
    assert capsys.readouterr().err == ""


def test_unknown_record_keys_warn_through_the_command_line(tmp_path):
    """The same line reaches a user of ``sfr-ds mine`` (here before it refuses an empty selection)."""
    train, docs = mine_setup(tmp_path, [dict(RECORD, pos_idz=["d1"]), RECORD, dict(RECORD, pos_idz=[])])
    p = refused("mine", *mine_args(train, docs, tmp_path / "o.jsonl", "--dataset", "x"), where=tmp_path)
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{train}: 2 record(s)" in warnings[0] and f"{train}:1" in warnings[0]


# --- what is refused is refused before any work; what is allowed is written whole ---------------


def test_overwrite_replaces_an_output_atomically_and_only_when_asked(tmp_path):
    sts = write(tmp_path / "sts.csv", STS)
    out = write(tmp_path / "out.jsonl", "old\n")
    args = ["prepare", "--sts", sts, "--dataset", "stsb", "--out", out]
    refused(*args, where=tmp_path, says=[f"{out}: exists"])
    p = sfr_ds(*args, "--overwrite")
    assert "wrote 2 records" in p.stdout and len(read_jsonl(out)) == 2
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.jsonl", "sts.csv"]  # no temporary left


def test_count_of_bad_inputs():
    """The issue asks for many distinct mistakes; this file holds its share of them."""
    assert len(PREPARE) + len(MINE) + len(TRAIN) + len(AUDIT) + 2 >= 70
