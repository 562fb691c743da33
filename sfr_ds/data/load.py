"""Load training records from local JSONL / Parquet files or a hub dataset name.

JSONL is read line by line by ``records.read_jsonl`` so that errors name the exact line; Parquet
and hub datasets go through ``datasets`` and errors name the row (1-based, as ``line``). Every
problem of a file is a ``RecordError`` naming it, never a library traceback.
"""

from __future__ import annotations

import os

import numpy as np

from .records import Record, RecordError, check_record, read_jsonl, unknown_keys, warn_unknown_keys


def _dataset(source: str):
    """The rows of a Parquet file or hub dataset; a file ``datasets`` cannot read is one error."""
    import datasets

    try:
        if os.path.exists(source):
            return datasets.load_dataset("parquet", data_files=source, split="train")
        return datasets.load_dataset(source, split="train")  # a hub name, where a hub is reachable
    except Exception as e:  # pyarrow and the hub raise many types; the user needs the file and why
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RecordError(f"{source}: cannot be read as Parquet or a hub dataset ({reason})") from None


def _read_with_datasets(source: str) -> list[Record]:
    out, odd = [], []
    for i, row in enumerate(_dataset(source), 1):
        out.append(check_record(row, f"{source}:{i}"))
        if keys := unknown_keys(row):
            odd.append((f"{source}:{i}", keys))
    if not out:
        raise RecordError(f"{source}: holds no records")
    warn_unknown_keys(source, odd)
    return out


def load_records(source: str) -> list[Record]:
    if os.path.isdir(source):
        raise RecordError(f"{source}: is a folder; give JSONL or Parquet files")
    if source.endswith((".jsonl", ".json")):
        if not os.path.exists(source):
            raise RecordError(f"training file not found: {source}")
        return read_jsonl(source)
    return _read_with_datasets(source)


def load_training_data(files: list[str], max_per_dataset: int | None = None) -> list[Record]:
    """All records of all files, in file order; optionally the first N of each dataset."""
    records: list[Record] = []
    seen: dict[str, int] = {}
    for f in files:
        for r in load_records(f):
            if max_per_dataset is not None and seen.get(r.dataset, 0) >= max_per_dataset:
                continue
            seen[r.dataset] = seen.get(r.dataset, 0) + 1
            records.append(r)
    return records


def group_by_dataset(records: list[Record]) -> dict[str, list[int]]:
    """Dataset name -> its records' indices (ascending), in first-seen order. Memory-mapped records
    (``arrow_store.ArrowRecords``) answer from a compact column, without reading any text."""
    if hasattr(records, "groups"):
        return records.groups()
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.dataset, []).append(i)
    return groups


def neg_counts(records: list[Record]) -> np.ndarray:
    """[n] each record's number of negatives (memory-mapped records: from a compact column)."""
    if hasattr(records, "neg_counts"):
        return records.neg_counts()
    return np.fromiter((len(r.neg) for r in records), dtype=np.int64, count=len(records))
