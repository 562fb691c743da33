"""Load training records from local JSONL / Parquet files or a hub dataset name.

JSONL is read line by line by ``records.read_jsonl`` so that errors name the exact line; Parquet
and hub datasets go through ``datasets`` and errors name the row (1-based, as ``line``).
"""

from __future__ import annotations

import os

from .records import Record, RecordError, check_record, read_jsonl


def _read_with_datasets(source: str) -> list[Record]:
    import datasets

    if os.path.exists(source):
        ds = datasets.load_dataset("parquet", data_files=source, split="train")
    else:  # a hub name, where a hub is reachable
        ds = datasets.load_dataset(source, split="train")
    out = [check_record(row, f"{source}:{i}") for i, row in enumerate(ds, 1)]
    if not out:
        raise RecordError(f"{source}: holds no records")
    return out


def load_records(source: str) -> list[Record]:
    if source.endswith((".jsonl", ".json")):
        if not os.path.exists(source):
            raise FileNotFoundError(f"training file not found: {source}")
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
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.dataset, []).append(i)
    return groups
