"""Training records converted once to Arrow and memory-mapped by every rank of a node.

Parsing millions of JSON records into Python objects on every rank, at every start, costs minutes
and tens of GB per rank. Instead each source file is validated once (``check_record``, the same
``FILE:LINE: field ...`` errors as the in-memory path) and written as one Arrow stream file, the
format ``datasets`` stores (``datasets.Dataset.from_file`` opens it). Every later start, and every
rank, memory-maps that file: the texts stay in the page cache, shared by the node's ranks, and a
rank reads only the rows a step needs (``ArrowRecords``). The plan and the negatives' draw read two
compact columns (each record's dataset and number of negatives), never the texts.

Cache layout under ``data.cache_dir`` (default ``$XDG_CACHE_HOME/sfr_ds/data``, i.e.
``~/.cache/sfr_ds/data``; put it on shared storage to convert once per cluster, on a local disk to
convert once per node)::

    entries/<stem>-<key>/records.arrow   the records; <key> hashes the source's bytes and the reader
    entries/<stem>-<key>/manifest.json   written last: an entry without it is not complete
    sources/<pathkey>.json               path + (size, mtime_ns, inode, device) -> entry
    locks/<pathkey>.lock                 fcntl lock held while the source is checked or converted
    tmp/<pathkey>-<pid>-<hex>/           a conversion in progress, renamed to entries/ when done

Content key: the sha256 of the source's bytes. Hashing 10 GB takes seconds, so the hash is
remembered in ``sources/`` against the file's (size, mtime_ns, inode, device) and recomputed only
when that stat changes (a touched but unchanged file is re-hashed, never re-converted); a file
rewritten in place with the same size and nanosecond mtime, which no editor or copy does, would not
be noticed (the same rule ``make`` and ``rsync`` follow).

Once per node: every rank takes the fast path (stat matches, entry complete) without a lock. On a
miss it blocks on an exclusive ``fcntl.flock`` of the source's lock file; the first to hold it
converts, the others wait and then find the entry. The lock is the kernel's, so it also serialises
two jobs, and a killed converter releases it. A conversion is built in ``tmp/`` and renamed into
``entries/`` with its manifest written last, so a kill leaves only a temporary folder, which the
next holder of the lock deletes. No ``torch.distributed`` is involved.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sfr_ds.io import atomic_write_json

from .formats import SFR_DS, FileFormat, file_formats, to_record
from .records import Record, RecordError, check_record, iter_jsonl, unknown_keys, warn_unknown_keys

FORMAT_VERSION = 1
RECORDS_FILE = "records.arrow"
MANIFEST = "manifest.json"  # the completion marker: written last
BATCH_ROWS = 8192  # rows per Arrow record batch, fewer when their texts pass BATCH_BYTES
BATCH_BYTES = 64 << 20
# Testing hooks: SIGKILL this process after writing N rows / sleep S seconds per row converted.
KILL_AFTER_ROWS_ENV = "SFR_DS_TEST_KILL_AFTER_ROWS"
ROW_DELAY_ENV = "SFR_DS_TEST_ROW_DELAY_S"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sfr_ds" / "data"


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("query", pa.string()),
            ("pos", pa.list_(pa.string())),
            ("neg", pa.list_(pa.string())),
            ("task_type", pa.string()),
            ("dataset", pa.string()),
            ("instruction", pa.string()),
            ("extra", pa.string()),  # JSON of the optional fields (ids, scores, ...); null: none
            ("line", pa.int64()),  # the 1-based line (JSONL) or row (Parquet) it was read from
            ("dataset_id", pa.int32()),  # index into the manifest's ``datasets``: the plan's column
            ("n_neg", pa.int32()),  # len(neg): the negatives' draw needs it for every record
        ]
    )


# ----------------------------------------------------------------------------- reading sources


def _rows(source: str, fmt: FileFormat) -> Iterator[tuple[str, object]]:
    """(``file:line``, decoded value as an sfr-ds record) per record of a source, as the in-memory
    path reads it; rows of another library's format mapped to sfr-ds's fields (``formats``)."""
    if reader_of(source) == "jsonl":
        for where, obj in iter_jsonl(source):
            yield where, to_record(obj, fmt, source, where)
        return
    from .load import _dataset

    for i, row in enumerate(_dataset(source), 1):
        yield f"{source}:{i}", to_record(row, fmt, source, f"{source}:{i}")


def reader_of(source: str) -> str:
    return "jsonl" if source.endswith((".jsonl", ".json")) else "datasets"


def _check_source(source: str) -> None:
    if os.path.isdir(source):
        raise RecordError(f"{source}: is a folder; give JSONL or Parquet files")
    if reader_of(source) == "jsonl" and not os.path.exists(source):
        raise RecordError(f"training file not found: {source}")


# ----------------------------------------------------------------------------- cache entries


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stat_key(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def _complete(entry: Path) -> dict | None:
    """The manifest of a complete entry of this format, else None."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("version") != FORMAT_VERSION or not (entry / RECORDS_FILE).is_file():
        return None
    return manifest


class _Cache:
    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root).expanduser() if root else default_cache_dir()

    def pathkey(self, source: str, reader: str) -> str:
        where = os.path.realpath(source) if os.path.exists(source) else source
        return _sha(f"{where}\0{reader}")[:32]

    def index_file(self, pathkey: str) -> Path:
        return self.root / "sources" / f"{pathkey}.json"

    def entry(self, source: str, content: str, reader: str) -> Path:
        key = _sha(f"sfr-ds records v{FORMAT_VERSION}\0{reader}\0{content}")[:32]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source).stem)[:40]
        return self.root / "entries" / f"{stem}-{key}"

    def lookup(self, source: str, pathkey: str) -> tuple[Path, dict] | None:
        """The fast path, no lock: the source's stat is the one its hash was taken at, and the
        entry that hash names is complete."""
        if not os.path.exists(source):
            return None  # a hub name: its content is known only by loading it
        try:
            known = json.loads(self.index_file(pathkey).read_text(encoding="utf-8"))
            if known.get("stat") != _stat_key(source):
                return None
        except (OSError, ValueError):
            return None
        entry = self.root / "entries" / str(known.get("entry", ""))
        manifest = _complete(entry) if known.get("entry") else None
        return (entry, manifest) if manifest else None

    @contextmanager
    def lock(self, pathkey: str) -> Iterator[None]:
        path = self.root / "locks" / f"{pathkey}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released on close, and by the kernel if we are killed
            yield

    def clean_tmp(self, pathkey: str) -> None:
        """Folders of earlier conversions of this source, killed before their rename: whoever
        holds its lock is the only one that can be converting it."""
        tmp = self.root / "tmp"
        for p in tmp.glob(f"{pathkey}-*") if tmp.is_dir() else ():
            shutil.rmtree(p, ignore_errors=True)


def _content_key(source: str) -> str:
    if os.path.exists(source):
        return _file_sha256(source)
    from .load import _dataset

    return _sha(f"hub\0{source}\0{_dataset(source)._fingerprint}")


def ensure_converted(
    source: str, cache_dir: str | os.PathLike | None = None, fmt: FileFormat = SFR_DS
) -> tuple[Path, dict, float | None]:
    """(entry folder, manifest, seconds this call spent converting or None) for one source,
    converting it first if no complete entry holds its current content."""
    _check_source(source)
    reader = reader_of(source) + fmt.key()
    cache = _Cache(cache_dir)
    pathkey = cache.pathkey(source, reader)
    if found := cache.lookup(source, pathkey):
        return (*found, None)
    with cache.lock(pathkey):
        if found := cache.lookup(source, pathkey):  # another rank or job converted it meanwhile
            return (*found, None)
        stat = _stat_key(source) if os.path.exists(source) else None
        entry = cache.entry(source, _content_key(source), reader)
        seconds = None
        manifest = _complete(entry)
        if manifest is None:
            cache.clean_tmp(pathkey)
            t0 = time.perf_counter()
            tmp = cache.root / "tmp" / f"{pathkey}-{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir(parents=True)
            try:
                _convert(source, fmt, tmp)
                _publish(tmp, entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            manifest = _complete(entry)
            if manifest is None:
                raise RecordError(f"{entry}: the converted records could not be stored")
            seconds = time.perf_counter() - t0
        if stat is not None:
            atomic_write_json(cache.index_file(pathkey), {"path": source, "stat": stat, "entry": entry.name})
    return entry, manifest, seconds


def _publish(tmp: Path, entry: Path) -> None:
    """Rename a finished conversion into place; an entry already there (the same content,
    converted by another job under another path) is kept and ours dropped."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    if _complete(entry) is None and entry.exists():
        shutil.rmtree(entry, ignore_errors=True)  # a damaged entry (never written by this code)
    try:
        os.rename(tmp, entry)
    except OSError:
        if _complete(entry) is None:
            raise


def _convert(source: str, fmt: FileFormat, out: Path) -> None:
    """Validate every record of ``source`` and write them to ``out/records.arrow``; the manifest
    is written last, after the data is on disk."""
    import pyarrow as pa

    schema = _schema()
    names: dict[str, int] = {}
    cols: dict[str, list] = {name: [] for name in schema.names}
    n, nbytes = 0, 0
    odd: list = [0, "", set()]  # records with unknown keys: count, first file:line, the keys
    kill_after = int(os.environ.get(KILL_AFTER_ROWS_ENV) or 0)
    delay = float(os.environ.get(ROW_DELAY_ENV) or 0)
    t0 = time.perf_counter()
    path = out / RECORDS_FILE
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:

        def flush():
            if cols["query"]:
                arrays = [pa.array(cols[f.name], type=f.type) for f in schema]
                writer.write_batch(pa.record_batch(arrays, schema=schema))
                for v in cols.values():
                    v.clear()

        for where, obj in _rows(source, fmt):
            r = check_record(obj, where)
            if keys := unknown_keys(obj):
                odd[0] += 1
                odd[1] = odd[1] or where
                odd[2].update(keys)
            cols["query"].append(r.query)
            cols["pos"].append(r.pos)
            cols["neg"].append(r.neg)
            cols["task_type"].append(r.task_type)
            cols["dataset"].append(r.dataset)
            cols["instruction"].append(r.instruction)
            cols["extra"].append(json.dumps(r.extra, ensure_ascii=False) if r.extra else None)
            cols["line"].append(int(where.rsplit(":", 1)[1]))
            cols["dataset_id"].append(names.setdefault(r.dataset, len(names)))
            cols["n_neg"].append(len(r.neg))
            n += 1
            nbytes += len(r.query) + sum(map(len, r.pos)) + sum(map(len, r.neg))
            if len(cols["query"]) >= BATCH_ROWS or nbytes >= BATCH_BYTES:
                flush()
                nbytes = 0
            if delay:
                time.sleep(delay)
            if n == kill_after:
                flush()
                sink.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        flush()
    if n == 0:
        raise RecordError(f"{source}: holds no records")
    with open(path, "rb") as f:
        os.fsync(f.fileno())  # the data is durable before the marker that says it is complete
    manifest = {
        "version": FORMAT_VERSION,
        "source": source,
        "reader": reader_of(source),
        "format": asdict(fmt),
        "rows": n,
        "datasets": list(names),
        "unknown_keys": {"count": odd[0], "first": odd[1], "keys": sorted(odd[2])},
        "convert_s": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(out / MANIFEST, manifest, durable=True)


# ----------------------------------------------------------------------------- reading entries


def _ints(arr) -> np.ndarray:
    """An int32 Arrow array without nulls as a numpy view of its buffer (``to_numpy`` would
    import pandas: a second and 80 MB per rank)."""
    return np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr), offset=arr.offset * 4)


class _Part:
    """One source's records, memory-mapped: per record batch, its columns (no text is copied)."""

    def __init__(self, source: str, entry: Path, manifest: dict, converted_s: float | None):
        import pyarrow as pa

        self.source, self.entry, self.manifest, self.converted_s = source, entry, manifest, converted_s
        with pa.memory_map(str(entry / RECORDS_FILE)) as mm:  # buffers keep the map alive
            self.batches = list(pa.ipc.open_stream(mm))
        self.cols = [
            tuple(
                b.column(name)
                for name in ("query", "pos", "neg", "task_type", "dataset", "instruction", "extra", "line")
            )
            for b in self.batches
        ]
        self.starts = np.cumsum([0] + [b.num_rows for b in self.batches]).tolist()
        self.rows = self.starts[-1]
        if self.rows != manifest["rows"]:
            raise RecordError(
                f"{entry}: holds {self.rows} records, its manifest says {manifest['rows']}; "
                "the cache entry is damaged: delete the folder and start again"
            )
        self.names: list[str] = manifest["datasets"]

    def column(self, name: str) -> np.ndarray:
        """A compact int column over all rows (read from the page cache, copied: 4 bytes a row)."""
        parts = [_ints(b.column(name)) for b in self.batches]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def record(self, j: int) -> Record:
        c = bisect.bisect_right(self.starts, j) - 1
        k = j - self.starts[c]
        q, pos, neg, task, ds, instr, extra, line = (col[k].as_py() for col in self.cols[c])
        return Record(
            q, pos, neg, task, ds, instr, json.loads(extra) if extra else {}, f"{self.source}:{line}"
        )


class ArrowRecords(Sequence):
    """The training records of several sources as one sequence of ``Record``, read row by row
    from the memory-mapped Arrow files; in file order, optionally the first N of each dataset."""

    def __init__(self, parts: list[_Part], max_per_dataset: int | None = None):
        self.parts = parts
        self._starts = np.cumsum([0] + [p.rows for p in parts]).tolist()
        names: dict[str, int] = {}
        codes = []
        for p in parts:  # each part's dataset ids -> one numbering, in first-seen order
            remap = np.asarray([names.setdefault(n, len(names)) for n in p.names], dtype=np.int32)
            codes.append(remap[p.column("dataset_id")])
        code = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32)
        self.names = list(names)
        self._rows: np.ndarray | None = None  # logical index -> row over all parts; None: the same
        if max_per_dataset is not None:
            keep = np.zeros(len(code), dtype=bool)
            for c in range(len(self.names)):
                keep[np.flatnonzero(code == c)[:max_per_dataset]] = True
            self._rows = np.flatnonzero(keep)
            code = code[self._rows]
        self._len = len(code)
        self._last: tuple[int, Record] | None = None
        order = np.argsort(code, kind="stable")  # per dataset, its records in ascending order
        bounds = np.searchsorted(code[order], np.arange(len(self.names) + 1))
        self._groups = {
            name: order[bounds[c] : bounds[c + 1]].astype(np.int64)
            for c, name in enumerate(self.names)
            if bounds[c + 1] > bounds[c]
        }
        del code, order, codes

    def __len__(self) -> int:
        return self._len

    def _row(self, i: int) -> int:
        return int(self._rows[i]) if self._rows is not None else i

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        i = int(i)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        last = self._last  # build_text_batch reads records[i], then the drawer reads it again
        if last is not None and last[0] == i:
            return last[1]
        g = self._row(i)
        p = bisect.bisect_right(self._starts, g) - 1
        record = self.parts[p].record(g - self._starts[p])
        self._last = (i, record)
        return record

    def groups(self) -> dict[str, np.ndarray]:
        """Dataset name -> its records' indices (ascending), datasets in first-seen order."""
        return self._groups

    def neg_counts(self) -> np.ndarray:
        """[n] int32: each record's number of negatives (from the compact column)."""
        counts = np.concatenate([p.column("n_neg") for p in self.parts])
        return counts if self._rows is None else counts[self._rows]

    def notes(self) -> list[str]:
        """One line per source: where its records come from, for the start of a run."""
        out = []
        for p in self.parts:
            how = (
                f"converted now in {p.converted_s:.1f} s"
                if p.converted_s is not None
                else f"converted earlier in {p.manifest.get('convert_s', 0):.1f} s"
            )
            out.append(f"records: {p.rows} from {p.source} via cache {p.entry} ({how})")
        return out


def _say(msg: str) -> None:
    print(f"[sfr-ds] {msg}", flush=True)


def open_training_data(
    files: list[str],
    max_per_dataset: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    formats: dict | None = None,
) -> ArrowRecords:
    """``load_training_data`` without parsing into this process: each file converted once (by
    whichever process of the node or cluster gets its lock first) and memory-mapped. ``formats``
    is ``data.file_formats``: the files in FlagEmbedding's or sentence-transformers' format."""
    files = [str(f) for f in files]
    fmts = file_formats(formats or {}, files)
    parts = []
    for f in files:
        entry, manifest, seconds = ensure_converted(f, cache_dir, fmts.get(f, SFR_DS))
        if seconds is not None:
            _say(f"converted {f} to Arrow: {manifest['rows']} records in {seconds:.1f} s ({entry})")
        odd = manifest.get("unknown_keys") or {}
        if odd.get("count"):  # the in-memory path's warning, from what the conversion found
            found = [(odd["first"], odd["keys"])] + [(odd["first"], [])] * (odd["count"] - 1)
            warn_unknown_keys(f, found)
        parts.append(_Part(f, entry, manifest, seconds))
    return ArrowRecords(parts, max_per_dataset)


if __name__ == "__main__":  # python -m sfr_ds.data.arrow_store FILE... : convert, print the entries
    for src in sys.argv[1:]:
        e, m, s = ensure_converted(src)
        print(f"{src}: {m['rows']} records in {e}" + (f" (converted in {s:.1f} s)" if s else ""))
