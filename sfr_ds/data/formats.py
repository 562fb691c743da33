"""Training files in other libraries' formats, read as they are: FlagEmbedding and sentence-transformers.

A file's format, and what its records do not say (instruction, task type, dataset), are given once
per file in the config, keyed by the file's name (or a path ending)::

    data:
      train_files: [msmarco_hn.jsonl, nli_triplets.parquet]
      file_formats:
        msmarco_hn.jsonl: {format: flagembedding,
                           instruction: "Given a web search query, retrieve relevant passages"}
        nli_triplets.parquet: {format: sentence-transformers, task_type: sts, dataset: nli,
                               instruction: "Retrieve semantically similar text"}

- ``flagembedding``: FlagEmbedding's JSONL ``{"query", "pos": [...], "neg": [...], "pos_scores",
  "neg_scores", "prompt", "type"}``. ``prompt`` is the record's instruction (else the file's);
  ``type`` containing ``class`` / ``clustering`` / ``sts`` gives classification / clustering / sts
  (labels-as-documents for the first two), any other type (``normal``, ``only_1neg``...) the file's
  ``task_type``. ``neg_scores`` are kept (aligned with ``neg``); ``pos_scores`` are dropped
  (sfr-ds does not distil).
- ``sentence-transformers``: ``anchor`` / ``positive`` / ``negative`` or ``negative_1..n`` columns,
  or any three-plus string columns read by position (anchor, positive, negatives), as
  sentence-transformers' losses read them. A ``label`` or ``score`` column is pair data, not a
  triplet, and is refused.

The file's ``dataset`` defaults to its name without extension, ``task_type`` to retrieval and
``instruction`` to none. Records are then checked as any sfr-ds record, with the same
``FILE:LINE: field ...`` errors.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .records import TASK_TYPES, RecordError

FORMATS = ("sfr-ds", "flagembedding", "sentence-transformers")
_KEYS = ("format", "instruction", "task_type", "dataset")


@dataclass(frozen=True)
class FileFormat:
    format: str = "sfr-ds"
    instruction: str = ""
    task_type: str = "retrieval"
    dataset: str = ""  # "" = the file's name without its extension

    def key(self) -> str:
        """What the converted copy depends on, besides the file's bytes."""
        return "" if self.format == "sfr-ds" else repr(sorted(asdict(self).items()))


SFR_DS = FileFormat()


def file_formats(options: dict, files: list[str]) -> dict[str, FileFormat]:
    """``data.file_formats`` resolved to the train files it names; every mistake at once."""
    from ..config import ConfigError

    out, problems = {}, []
    for name, spec in (options or {}).items():
        where = f"'data.file_formats.{name}'"
        matches = [f for f in files if f == name or Path(f).name == name or f.endswith(os.sep + str(name))]
        if len(matches) != 1:
            problems.append(
                f"{where} names {len(matches) or 'no'} file(s) of 'data.train_files'; give a name of one"
            )
            continue
        if not isinstance(spec, dict) or set(spec) - set(_KEYS):
            extra = sorted(set(spec) - set(_KEYS)) if isinstance(spec, dict) else spec
            problems.append(f"{where}: unknown key(s) {extra}; expected {list(_KEYS)}")
            continue
        fmt = FileFormat(**{k: str(v) for k, v in spec.items()})
        if fmt.format not in FORMATS:
            problems.append(f"{where}.format is {fmt.format!r}; expected one of {list(FORMATS)}")
        if fmt.task_type not in TASK_TYPES:
            problems.append(f"{where}.task_type is {fmt.task_type!r}; expected one of {sorted(TASK_TYPES)}")
        out[matches[0]] = fmt
    if problems:
        raise ConfigError(problems)
    return out


def to_record(obj, fmt: FileFormat, source: str, where: str):
    """A row of ``fmt`` as an sfr-ds record dict (``check_record`` checks it next)."""
    if fmt.format == "sfr-ds" or not isinstance(obj, dict):
        return obj
    dataset = fmt.dataset or Path(source).stem
    if fmt.format == "flagembedding":
        return _flagembedding(obj, fmt, dataset)
    return _sentence_transformers(obj, fmt, dataset, where)


def _flagembedding(obj: dict, fmt: FileFormat, dataset: str) -> dict:
    kind = str(obj.get("type") or "")
    task = next((t for word, t in _FLAG_TYPES if word in kind), fmt.task_type)
    out = {
        "query": obj.get("query"),
        "pos": obj.get("pos"),
        "neg": obj.get("neg") if obj.get("neg") is not None else [],
        "task_type": task,
        "dataset": dataset,
        "instruction": obj.get("prompt") or fmt.instruction,
    }
    if obj.get("neg_scores") is not None:
        out["neg_scores"] = obj["neg_scores"]
    return out


_FLAG_TYPES = (("class", "classification"), ("clustering", "clustering"), ("sts", "sts"))
_NEGATIVE = re.compile(r"negative(?:_(\d+))?$")


def _sentence_transformers(obj: dict, fmt: FileFormat, dataset: str, where: str) -> dict:
    cols = [k for k, v in obj.items() if v is not None]
    if odd := [k for k in cols if k in ("label", "score", "labels", "scores")]:
        raise RecordError(
            f"{where}: column {odd[0]!r}: pairs with a label or score are not (anchor, positive, "
            "negative) triplets; give triplets, or prepare the pairs with sfr-ds prepare --sts"
        )
    if "anchor" in obj and "positive" in obj:
        negs = sorted((int(m.group(1) or 0), k) for k in cols if (m := _NEGATIVE.match(k)))
        query, pos, neg = obj["anchor"], obj["positive"], [obj[k] for _, k in negs]
    elif len(cols) >= 2:
        query, pos, neg = obj[cols[0]], obj[cols[1]], [obj[k] for k in cols[2:]]
    else:
        raise RecordError(
            f"{where}: a sentence-transformers row needs anchor and positive columns, got {cols}"
        )
    return {
        "query": query,
        "pos": [pos] if isinstance(pos, str) else pos,
        "neg": neg,
        "task_type": fmt.task_type,
        "dataset": dataset,
        "instruction": fmt.instruction,
    }
