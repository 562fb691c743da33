"""Local task files -> plain Python data, every row checked on the way (errors name file:line, field).

Evaluating a task and checking it before any work run the same reader; ``head`` reads only each
file's first row (a Slurm submission on a login node checks the files' shape and leaves the whole
read to the array element).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..data.prepare import doc_text
from ..data.records import RecordError, csv_rows, iter_jsonl, table_reader
from .specs import LocalSpec, TaskSpecError, parse_local

T = TypeVar("T")

# ------------------------------------------------------------------------------- readers
#
# Each reader turns a local task's files into plain Python data and checks every row on the way
# (an error names file:line and the field). Evaluating a task and checking it before any work run
# the same reader; ``head`` reads only each file's first row (a Slurm submit on a login node checks
# the files' shape and leaves the whole read to the array element).


@dataclass
class Ranking:
    """Retrieval or reranking data: what mteb's RetrievalSplitData holds, as plain dicts."""

    corpus: dict[str, str]
    queries: dict[str, str]
    relevant: dict[str, dict[str, int]]
    top_ranked: dict[str, list[str]] | None = None


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Whatever reading a user's file raises, as one TaskSpecError naming the file (and line)."""
    try:
        yield
    except TaskSpecError:
        raise
    except RecordError as e:  # sfr_ds.data's line readers (UTF-8, JSON, CSV rows): already name file:line
        raise TaskSpecError(str(e)) from None
    except IsADirectoryError:
        raise TaskSpecError(f"{path}: is a folder; expected a file") from None
    except FileNotFoundError:
        raise TaskSpecError(f"{path}: does not exist") from None
    except OSError as e:
        raise TaskSpecError(f"{path}: cannot be read ({e.strerror or e})") from None


def _read(path: Path, rows: Iterable[T], head: bool = False) -> list[T]:
    """The rows of one file (its first only, with ``head``); a file with none is an error."""
    if not path.exists():
        raise TaskSpecError(f"{path}: does not exist")
    if path.is_dir():
        raise TaskSpecError(f"{path}: is a folder; expected a file")
    with _reading(path):
        got = list(itertools.islice(rows, 1 if head else None))
    if not got:
        raise TaskSpecError(f"{path}: holds no rows")
    return got


def _table(path: Path, tabs: bool = False) -> Iterator[tuple[str, list[str]]]:
    """(``file:line``, cells) per non-blank row of a CSV or TSV (``records.table_reader``)."""
    reader = table_reader(path, tabs)
    for row in csv_rows(path, reader, "TSV" if tabs else "CSV"):
        if any(cell.strip() for cell in row):
            yield f"{path}:{reader.line_num}", row


def _objects(path: Path) -> Iterator[tuple[str, dict]]:
    """(``file:line``, object) per non-blank JSONL line."""
    for where, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise TaskSpecError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def _text(where: str, obj: dict, key: str, optional: bool = False) -> str:
    value = obj.get(key, "" if optional else None)
    if not isinstance(value, str):
        raise TaskSpecError(f"{where}: field {key!r} is {_what(value)}; expected a string")
    return value


def _texts(where: str, obj: dict, key: str) -> list[str]:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TaskSpecError(f"{where}: field {key!r} is {_what(value)}; expected a list of strings")
    return value


def _number(where: str, value: object, field: str) -> float:
    """A finite score (a JSON number, or a table cell that reads as one)."""
    try:
        x = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        x = None
    if x is None or not math.isfinite(x):
        raise TaskSpecError(f"{where}: field {field!r} is {_what(value)}; expected a finite number")
    return x


def _what(value: object) -> str:
    return "missing" if value is None else f"{value!r}"[:60]


def _beir_rows(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """(id, {field: text}) per BEIR JSONL object: ``_id`` required and unique (a number is read as
    its string, as qrels hold strings), the fields optional strings (BEIR omits empty titles)."""
    first: dict[str, str] = {}
    for where, obj in _objects(path):
        doc_id = obj.get("_id")
        if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool) or doc_id == "":
            raise TaskSpecError(f"{where}: field '_id' is {_what(doc_id)}; expected a string")
        doc_id = str(doc_id)
        if doc_id in first:
            raise TaskSpecError(f"{where}: _id {doc_id!r} repeated (first at {first[doc_id]})")
        first[doc_id] = where
        yield doc_id, {name: _text(where, obj, name, optional=True) for name in fields}


def _qrels_rows(path: Path) -> Iterator[tuple[str, str, int]]:
    """(query id, doc id, relevance) per qrels row; the ``query-id`` header row is optional."""
    for where, row in _table(path, tabs=True):
        if where.endswith(":1") and row[0] == "query-id":
            continue
        if len(row) < 3:
            raise TaskSpecError(f"{where}: expected query-id<TAB>corpus-id<TAB>score, got {row!r}"[:200])
        yield row[0], row[1], int(_number(where, row[2], "score"))


def read_retrieval(local: LocalSpec, head: bool = False) -> Ranking:
    """A BEIR folder: every query of qrels/SPLIT.tsv that queries.jsonl holds, over the corpus."""
    folder = local.path
    if not folder.is_dir():
        raise TaskSpecError(
            f"{local.spec()}: retrieval reads a BEIR folder (corpus.jsonl, queries.jsonl, "
            f"qrels/{local.split}.tsv); {folder} is a file"
        )
    corpus_file, queries_file = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_file = folder / "qrels" / f"{local.split}.tsv"
    corpus = {
        i: doc_text(f["title"], f["text"])
        for i, f in _read(corpus_file, _beir_rows(corpus_file, ("title", "text")), head)
    }
    queries = {
        i: f["text"].strip() for i, f in _read(queries_file, _beir_rows(queries_file, ("text",)), head)
    }
    relevant: dict[str, dict[str, int]] = {}
    for qid, did, score in _read(qrels_file, _qrels_rows(qrels_file), head):
        relevant.setdefault(qid, {})[did] = score
    if not head:
        relevant = {q: docs for q, docs in relevant.items() if q in queries}
        if not relevant:
            raise TaskSpecError(f"{qrels_file}: none of its query ids is in {queries_file}")
    return Ranking(corpus, queries, relevant)


def _reranking_jsonl(path: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    for where, obj in _objects(path):
        yield _text(where, obj, "query"), _texts(where, obj, "positive"), _texts(where, obj, "negative")


def _reranking_tsv(path: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    for where, row in _table(path, tabs=True):
        label = row[2].strip() if len(row) > 2 else None
        if label not in ("0", "1"):
            raise TaskSpecError(
                f"{where}: expected query<TAB>candidate<TAB>0|1; field 'label' (column 3) is {_what(label)}"
            )
        candidate = [row[1].strip()]
        yield row[0].strip(), candidate if label == "1" else [], [] if label == "1" else candidate


def read_reranking(local: LocalSpec, head: bool = False) -> Ranking:
    """Each query ranks only its own candidates (mteb's top_ranked); queries with no positive are
    dropped, as nothing can be found for them."""
    path = local.path
    rows = _reranking_jsonl(path) if path.suffix.lower() == ".jsonl" else _reranking_tsv(path)
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for query, pos, neg in _read(path, rows, head):
        group = groups.setdefault(query, ([], []))
        group[0].extend(pos)
        group[1].extend(neg)
    data = Ranking({}, {}, {}, {})
    for query, (pos, neg) in groups.items():
        if pos:
            qid = f"q{len(data.queries)}"
            data.queries[qid] = query
            ids = [f"{qid}-{i}" for i in range(len(pos) + len(neg))]
            data.corpus.update(zip(ids, pos + neg))
            data.top_ranked[qid] = ids
            data.relevant[qid] = dict.fromkeys(ids[: len(pos)], 1)
    if not head and not data.queries:
        raise TaskSpecError(f"{path}: no query has a positive candidate")
    return data


def _sts_jsonl(path: Path) -> Iterator[tuple[str, str, float]]:
    for where, obj in _objects(path):
        s1, s2 = _text(where, obj, "sentence1"), _text(where, obj, "sentence2")
        yield s1.strip(), s2.strip(), _number(where, obj.get("score"), "score")


def _sts_tsv(path: Path) -> Iterator[tuple[str, str, float]]:
    """STS-B rows: genre, file, year, id, score, sentence1, sentence2 (later columns ignored)."""
    for where, row in _table(path, tabs=True):
        if len(row) < 7:
            raise TaskSpecError(
                f"{where}: expected 7 tab-separated columns (genre, file, year, id, score, "
                f"sentence1, sentence2), got {len(row)}"
            )
        yield row[5].strip(), row[6].strip(), _number(where, row[4], "score")


def read_sts(local: LocalSpec, head: bool = False) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score) pairs."""
    path = local.path
    return _read(path, _sts_jsonl(path) if path.suffix.lower() == ".jsonl" else _sts_tsv(path), head)


def _labelled_rows(path: Path, text: str, label: str) -> Iterator[tuple[str, str]]:
    """(text, label) per row of a CSV with a header row naming the two columns."""
    rows = _table(path)
    where, header = next(rows, ("", None))
    if header is None:
        return  # an empty file: _read says so
    if missing := [c for c in (text, label) if c not in header]:
        raise TaskSpecError(
            f"{where}: header {header} lacks column(s) {missing} (name them with ?text=...&label=...)"
        )
    at = [header.index(text), header.index(label)]
    for where, row in rows:
        if len(row) <= max(at):
            raise TaskSpecError(f"{where}: {len(row)} column(s), but the header has {len(header)}")
        yield row[at[0]].strip(), row[at[1]].strip()


def _labelled_file(local: LocalSpec, split: str) -> Path:
    """SPLIT.csv of a folder, the file itself, or the ``train`` option's file beside them."""
    folder = local.path if local.path.is_dir() else local.path.parent
    if split == "train" and "train" in local.options:
        return folder / local.options["train"]
    if local.path.is_dir():
        return folder / f"{split}.csv"
    if split == "train":
        raise TaskSpecError(
            f"{local.spec()}: classification trains on other texts than it tests: give a folder "
            f"with train.csv and {local.split}.csv, or ?train=FILE beside {local.path.name}"
        )
    return local.path


def read_labelled(local: LocalSpec, split: str, head: bool = False) -> tuple[list[str], list[str]]:
    """(texts, labels) of a split (columns ``text`` and ``label`` of the options)."""
    path = _labelled_file(local, split)
    rows = _labelled_rows(path, local.options.get("text", "text"), local.options.get("label", "category"))
    pairs = _read(path, rows, head)
    return [text for text, _ in pairs], [label for _, label in pairs]


def read_classification(local: LocalSpec, head: bool = False) -> dict[str, tuple[list[str], list[str]]]:
    """split -> (texts, labels), for ``train`` and the evaluated split."""
    parts = {
        "train": read_labelled(local, "train", head),
        local.split: read_labelled(local, local.split, head),
    }
    if not head and len(set(parts["train"][1])) < 2:
        raise TaskSpecError(
            f"{_labelled_file(local, 'train')}: one label only; a classifier needs at least two"
        )
    return parts


def read_clustering(local: LocalSpec, head: bool = False) -> tuple[list[str], list[str]]:
    return read_labelled(local, local.split, head)


READERS = {
    "retrieval": read_retrieval,
    "reranking": read_reranking,
    "sts": read_sts,
    "classification": read_classification,
    "clustering": read_clustering,
}


def check_data(spec: str, head: bool = False) -> None:
    """Read a local task's files as evaluating it will (``head``: only each file's first row), so a
    missing, empty or malformed file stops the command before any work; MTEB names pass."""
    local = parse_local(spec)
    if local is not None:
        READERS[local.kind](local, head)
