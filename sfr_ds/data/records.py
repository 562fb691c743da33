"""The training record: one JSON object per line, checked field by field on load.

A record is ``{"query": str, "pos": [str, ...], "neg": [str, ...], "task_type": str,
"dataset": str, "instruction": str}`` plus optional ids and mining audit fields. Every problem
is reported with the file, the 1-based line and the field, so a user can open the file and fix it.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from sfr_ds.io import atomic_file

# Task types whose labels are the documents: the query is scored against its own positive and
# negatives only (the seed: "applying contrastive loss only to their specific negatives").
OWN_NEGATIVE_TASKS = frozenset({"classification", "clustering"})
TASK_TYPES = frozenset(
    {
        "retrieval",
        "sts",
        "reranking",
        "pair_classification",
        "bitext",
        "summarization",
        *OWN_NEGATIVE_TASKS,
    }
)
REQUIRED = ("query", "pos", "neg", "task_type", "dataset", "instruction")
# Optional fields: when present they must be lists aligned with ``pos`` / ``neg``.
ALIGNED = {"pos_ids": "pos", "neg_ids": "neg", "neg_scores": "neg", "neg_ranks": "neg"}
# Every optional key prepare and mine write; any other key is kept but never read, so it is
# most likely a typo (``pos_idz``) and is reported once per file.
OPTIONAL = ("query_id", *ALIGNED, "pair_id", "score", "label")
_WARNED: set[str] = set()  # files whose unknown keys were reported in this process


class RecordError(ValueError):
    """A training file holds a record that cannot be used; the message names file, line, field."""


@dataclass
class Record:
    query: str
    pos: list[str]
    neg: list[str]
    task_type: str
    dataset: str
    instruction: str
    extra: dict = field(default_factory=dict)  # query_id, pos_ids, neg_ids, neg_scores, ...
    where: str = field(default="", compare=False, repr=False)  # ``file:line`` it was read from

    @property
    def loss_mode(self) -> str:
        return "own_negatives" if self.task_type in OWN_NEGATIVE_TASKS else "in_batch"

    def to_json(self) -> dict:
        out = {
            "query": self.query,
            "pos": self.pos,
            "neg": self.neg,
            "task_type": self.task_type,
            "dataset": self.dataset,
            "instruction": self.instruction,
        }
        out.update(self.extra)
        return out


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def check_record(obj, where: str) -> Record:
    """Validate one decoded JSON value; ``where`` is ``file:line`` for messages."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    problems = []
    for name in REQUIRED:
        if name not in obj or obj[name] is None:
            problems.append(f"field '{name}' is missing")
    if problems:
        raise RecordError(f"{where}: " + "; ".join(problems))
    for name in ("query", "task_type", "dataset", "instruction"):
        if not isinstance(obj[name], str):
            problems.append(f"field '{name}' must be a string, got {type(obj[name]).__name__}")
    for name in ("pos", "neg"):
        if not _is_str_list(obj[name]):
            problems.append(f"field '{name}' must be a list of strings")
    if not problems:
        if not obj["query"].strip():
            problems.append("field 'query' is empty")
        if not obj["pos"]:
            problems.append("field 'pos' is an empty list (each record needs at least one positive)")
        elif any(not p.strip() for p in obj["pos"]):
            problems.append("field 'pos' holds an empty string")
        if any(not n.strip() for n in obj["neg"]):
            problems.append("field 'neg' holds an empty string")
        if obj["task_type"] not in TASK_TYPES:
            problems.append(
                f"field 'task_type' is {obj['task_type']!r}; expected one of {sorted(TASK_TYPES)}"
            )
        if not obj["dataset"].strip():
            problems.append("field 'dataset' is empty")
    for name, ref in ALIGNED.items():
        misaligned = not isinstance(obj.get(name), list) or len(obj[name]) != len(obj[ref])
        if name in obj and not problems and misaligned:
            problems.append(f"field '{name}' must be a list as long as '{ref}'")
    if problems:
        raise RecordError(f"{where}: " + "; ".join(problems))
    extra = {k: v for k, v in obj.items() if k not in REQUIRED}
    return Record(
        obj["query"],
        list(obj["pos"]),
        list(obj["neg"]),
        obj["task_type"],
        obj["dataset"],
        obj["instruction"],
        extra,
        where,
    )


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a UTF-8 text file, line endings kept (as ``csv`` wants).

    Bytes that are not UTF-8 are read as lone surrogates and reported with their line, so a
    user learns where the file is damaged instead of seeing a codec traceback; a folder or a
    missing file is one error too.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise RecordError(f"{path}: is a folder; expected a file")
    if not os.path.exists(path):
        raise RecordError(f"{path}: no such file")
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as e:
                byte = ord(line[e.start]) - 0xDC00
                raise RecordError(
                    f"{path}:{lineno}: not valid UTF-8 (byte 0x{byte:02x} at character {e.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            yield lineno, line


def csv_rows(path: str | os.PathLike, reader, kind: str = "CSV") -> Iterator:
    """The rows of a ``csv`` reader over ``path``'s ``text_lines``; a row csv cannot parse is one
    error naming its line (``reader.line_num`` is the line of the row just read)."""
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            raise RecordError(f"{path}:{reader.line_num}: not a valid {kind} row ({e})") from None
        yield row


def table_reader(path: str | os.PathLike, tabs: bool = False):
    """A ``csv.reader`` over ``path``: strict CSV (a stray quote would silently swallow the rows
    after it), or TSV without quoting (STS-B and WikiQA texts hold bare quotes)."""
    fmt = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tabs else {"strict": True}
    return csv.reader((line for _, line in text_lines(path)), **fmt)


def iter_jsonl(path: str | os.PathLike):
    """Yield (``file:line``, decoded value) per non-blank line; a bad line raises naming it."""
    path = os.fspath(path)
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def unknown_keys(obj: dict) -> list[str]:
    """Keys of a record that no part of sfr-ds reads (a None value counts as absent: Parquet
    fills a column's missing cells with None)."""
    return [k for k, v in obj.items() if k not in REQUIRED and k not in OPTIONAL and v is not None]


def warn_unknown_keys(path: str | os.PathLike, found: list[tuple[str, list[str]]]) -> None:
    """One stderr line per file (on rank 0, once per process) for records with unknown keys;
    ``found`` holds (``file:line``, keys) per such record. A warning, not an error: the keys are
    kept, so a file with extra columns of its own still trains."""
    path = os.fspath(path)
    if not found or path in _WARNED or os.environ.get("RANK", "0") != "0":
        return
    _WARNED.add(path)
    keys = sorted({k for _, ks in found for k in ks})
    print(
        f"warning: {path}: {len(found)} record(s) hold unknown key(s) {keys} (first: {found[0][0]}); "
        f"sfr-ds reads only {list(REQUIRED)} and {list(OPTIONAL)}: a typo?",
        file=sys.stderr,
        flush=True,
    )


def read_jsonl(path: str | os.PathLike) -> list[Record]:
    """Read and validate a JSONL training file. Blank lines are allowed and skipped."""
    records, odd = [], []
    for where, obj in iter_jsonl(path):
        records.append(check_record(obj, where))
        if keys := unknown_keys(obj):
            odd.append((where, keys))
    if not records:
        raise RecordError(f"{path}: holds no records")
    warn_unknown_keys(path, odd)
    return records


def write_jsonl(records, path: str | os.PathLike) -> int:
    """Write records (``Record`` or dicts) atomically; returns the count."""
    n = 0
    with atomic_file(path) as f:
        for r in records:
            f.write(json.dumps(r.to_json() if isinstance(r, Record) else r, ensure_ascii=False) + "\n")
            n += 1
    return n
