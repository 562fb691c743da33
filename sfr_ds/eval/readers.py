"""Local task files -> plain Python data, every row checked on the way (errors name file:line, field).

Evaluating a task and checking it before any work run the same reader; ``head`` reads only each
file's first row (a Slurm submission on a login node checks the files' shape and leaves the whole
read to the array element). A reader given a ``Tally`` counts what it keeps and what it drops and
why (BEIR queries whose id is in no file but the qrels, SemEval pairs without a gold score,
reranking queries without a positive), so the user sees how much of their data was scored.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
class Tally:
    """How much of a task's data is scored, and what was dropped, by reason."""

    unit: str = "rows"  # queries, pairs, texts
    scored: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # kept, but worth a look

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def line(self, task: str) -> str:
        total = sum(self.dropped.values())
        why = "; ".join(f"{n} {reason}" for reason, n in self.dropped.items())
        return f"{task}: {self.scored} {self.unit} scored, {total} dropped" + (f" ({why})" if why else "")

    def to_json(self) -> dict:
        return {"unit": self.unit, "scored": self.scored, "dropped": self.dropped, "warnings": self.warnings}


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
        grade = _number(where, row[2], "score")
        if grade < 0 or grade != int(grade):
            raise TaskSpecError(
                f"{where}: field 'score' is {row[2]!r}; a relevance grade is a whole number >= 0 "
                "(0 = not relevant)"
            )
        yield row[0], row[1], int(grade)


def read_retrieval(local: LocalSpec, head: bool = False, tally: Tally | None = None) -> Ranking:
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
        unknown = [q for q in relevant if q not in queries]
        relevant = {q: docs for q, docs in relevant.items() if q in queries}
        if not relevant:
            raise TaskSpecError(
                f"{qrels_file}: none of its query ids ({len(unknown)}, e.g. {unknown[0]!r}) is in "
                f"{queries_file}"
            )
        if tally is not None:
            tally.unit, tally.scored = "queries", len(relevant)
            tally.drop(f"with an id of {qrels_file.name} not in {queries_file.name}", len(unknown))
            if missing := sum(d not in corpus for docs in relevant.values() for d in docs):
                tally.warnings.append(
                    f"{missing} relevant document ids of {qrels_file.name} are not in corpus.jsonl"
                )
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


def read_reranking(local: LocalSpec, head: bool = False, tally: Tally | None = None) -> Ranking:
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
    if tally is not None:
        tally.unit, tally.scored = "queries", len(data.queries)
        tally.drop("without a positive candidate", len(groups) - len(data.queries))
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


def _semeval_pairs(inputs: Path, gold: Path, tally: Tally | None) -> Iterator[tuple[str, str, float]]:
    """SemEval STS 2012-2016: line i of STS.input.X.txt (sentence1<TAB>sentence2[<TAB>sources])
    is scored by line i of STS.gs.X.txt; a blank gold line is a pair the organisers did not score."""
    scores = [(where, "\t".join(cells).strip()) for where, cells in _lines(gold)]
    rows = list(_lines(inputs))
    if len(rows) != len(scores):
        raise TaskSpecError(
            f"{inputs}: {len(rows)} lines, but {gold} has {len(scores)}; they pair line by line"
        )
    for (where, cells), (gold_at, score) in zip(rows, scores):
        if not score:
            if tally is not None:
                tally.drop(f"without a gold score in {gold.name}")
            continue
        if len(cells) < 2:
            raise TaskSpecError(f"{where}: expected sentence1<TAB>sentence2, got {len(cells)} column(s)")
        yield cells[0].strip(), cells[1].strip(), _number(gold_at, score, "score")


def _lines(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(``file:line``, tab-separated cells) of every line, blank ones included (SemEval files are
    read line by line, not as CSV: their sentences hold unbalanced quotes)."""
    with _reading(path), open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskSpecError(f"{path}:{n}: not UTF-8 (byte {e.start} of the line)") from None
            yield f"{path}:{n}", line.rstrip("\n").rstrip("\r").split("\t")


def _semeval_files(local: LocalSpec) -> list[tuple[Path, Path]]:
    """(STS.input.X.txt, STS.gs.X.txt) pairs of a SemEval year folder, or of the file given."""
    path = local.path
    inputs = sorted(path.glob("STS.input.*.txt")) if path.is_dir() else [path]
    if not path.is_dir() and path.name.startswith("STS.gs."):
        inputs = [path.with_name(path.name.replace("STS.gs.", "STS.input.", 1))]
    pairs = []
    for i in inputs:
        gold = i.with_name(i.name.replace("STS.input.", "STS.gs.", 1))
        if not gold.is_file():
            raise TaskSpecError(f"{i}: no gold scores beside it ({gold.name} does not exist)")
        pairs.append((i, gold))
    return pairs


SICK_COLUMNS = ("sentence_A", "sentence_B", "relatedness_score")


def _sick_rows(path: Path, split: str | None) -> Iterator[tuple[str, str, float]]:
    """SICK's tab-separated files (SICK.txt, SICK_train.txt, SICK_test_annotated.txt ...): the
    pair and its relatedness score (SICK-R); with ``split``, only rows of that SemEval_set."""
    rows = _lines(path)
    where, header = next(rows, ("", None))
    if header is None:
        return
    if missing := [c for c in SICK_COLUMNS if c not in header]:
        raise TaskSpecError(f"{where}: a SICK file's header names {list(SICK_COLUMNS)}; it lacks {missing}")
    if split is not None and "SemEval_set" not in header:
        raise TaskSpecError(f"{where}: ?split={split} needs the SemEval_set column (SICK.txt has it)")
    a, b, score = (header.index(c) for c in SICK_COLUMNS)
    part = header.index("SemEval_set") if split is not None else None
    for where, cells in rows:
        if not any(c.strip() for c in cells):
            continue
        if len(cells) < len(header):
            raise TaskSpecError(f"{where}: {len(cells)} column(s), but the header has {len(header)}")
        if part is None or cells[part].strip().lower() == split.lower():
            yield cells[a].strip(), cells[b].strip(), _number(where, cells[score], "relatedness_score")


def _sts_format(local: LocalSpec) -> str:
    """semeval | sick | jsonl | stsb, from the path's name (or a folder's files)."""
    path = local.path
    if path.is_dir():
        if any(path.glob("STS.input.*.txt")):
            return "semeval"
        raise TaskSpecError(
            f"{local.spec()}: sts reads a file (STS-B .csv/.tsv, .jsonl, SICK*.txt) or a SemEval STS "
            f"folder of STS.input.*.txt + STS.gs.*.txt; {path} is a folder with none of them"
        )
    if path.name.startswith(("STS.input.", "STS.gs.")):
        return "semeval"
    if path.name.upper().startswith("SICK"):
        return "sick"
    return "jsonl" if path.suffix.lower() == ".jsonl" else "stsb"


def read_sts(
    local: LocalSpec, head: bool = False, tally: Tally | None = None
) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score) pairs: STS-B, JSONL, SemEval STS 2012-2016 or SICK-R."""
    fmt, path = _sts_format(local), local.path
    if fmt == "semeval":
        pairs = []
        for inputs, gold in _semeval_files(local):
            pairs += _read(inputs, _semeval_pairs(inputs, gold, tally), head)
    elif fmt == "sick":
        pairs = _read(
            path, _sick_rows(path, local.options.get("split") if "split" in local.options else None), head
        )
    else:
        pairs = _read(path, _sts_jsonl(path) if fmt == "jsonl" else _sts_tsv(path), head)
    if tally is not None:
        tally.unit, tally.scored = "pairs", len(pairs)
    return pairs


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


def read_classification(
    local: LocalSpec, head: bool = False, tally: Tally | None = None
) -> dict[str, tuple[list[str], list[str]]]:
    """split -> (texts, labels), for ``train`` and the evaluated split."""
    parts = {
        "train": read_labelled(local, "train", head),
        local.split: read_labelled(local, local.split, head),
    }
    if not head and len(set(parts["train"][1])) < 2:
        raise TaskSpecError(
            f"{_labelled_file(local, 'train')}: one label only; a classifier needs at least two"
        )
    if tally is not None:
        tally.unit, tally.scored = "texts", len(parts[local.split][0])
    return parts


def read_clustering(
    local: LocalSpec, head: bool = False, tally: Tally | None = None
) -> tuple[list[str], list[str]]:
    texts, labels = read_labelled(local, local.split, head)
    if tally is not None:
        tally.unit, tally.scored = "texts", len(texts)
    return texts, labels


READERS = {
    "retrieval": read_retrieval,
    "reranking": read_reranking,
    "sts": read_sts,
    "classification": read_classification,
    "clustering": read_clustering,
}


def check_data(spec: str, head: bool = False) -> Tally | None:
    """Read a local task's files as evaluating it will (``head``: only each file's first row), so a
    missing, empty or malformed file stops the command before any work; MTEB names pass (None).
    The tally says how much will be scored (after a whole read only)."""
    local = parse_local(spec)
    if local is None:
        return None
    tally = Tally()
    READERS[local.kind](local, head, tally)
    return None if head else tally
