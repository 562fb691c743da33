"""Files written whole or not at all, folders that appear complete, and content hashes.

Every write goes to a temporary sibling and is renamed into place (``os.replace`` is atomic on
POSIX), so a reader, a concurrent Slurm job or a kill never leaves half a file behind. ``durable``
also fsyncs the file and its folder, for pointers that must survive a power cut (``latest``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class OutputError(ValueError):
    """An output path that would destroy a file the user has; refused before any work."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", durable: bool = False) -> Iterator[IO]:
    """``with atomic_file(p) as f: f.write(...)``: ``p`` appears only once the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: str | bytes, durable: bool = False) -> None:
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w", durable) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, data: Any, durable: bool = False) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n", durable)


def partial_dir(out: str | os.PathLike) -> Path:
    """Where a folder destined for ``out`` is built before it is renamed into place."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


@contextmanager
def new_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a ``.partial`` sibling; it becomes ``out`` only once the block succeeds.

    ``out`` must be absent or an empty folder (callers refuse anything else first), so a kill at
    any moment leaves either nothing or the whole folder, never new files beside old ones.
    """
    out = Path(out)
    partial = partial_dir(out)
    shutil.rmtree(partial, ignore_errors=True)  # a leftover of an earlier, interrupted build
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        if out.exists():
            out.rmdir()  # empty by the contract above; anything else raises rather than mixing folders
        partial.rename(out)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def sha256_files(paths: Iterable[Path]) -> str:
    """One hash over the files' names and contents, by name: where the files lie does not count."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    """One file by either name: a link, ``..`` or another spelling of the path counts."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing: compare the names as they resolve
        return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def check_output(out: str | os.PathLike, inputs=(), overwrite: bool = False, folders=()) -> None:
    """Refuse, before any work, an output that is one of the ``inputs`` or lies inside one of the
    input ``folders`` (a model), even with ``overwrite``; and an existing file unless ``overwrite``."""
    out = Path(out)
    for src in inputs:
        if _same_file(out, Path(src)):
            what = "one of the inputs" if str(out) == str(src) else f"the same file as the input {src}"
            raise OutputError(f"{out}: is {what}; choose another output (nothing was written)")
    for folder in folders:
        if _inside(out, Path(folder)):
            raise OutputError(
                f"{out}: lies inside the input {folder}; choose another output (nothing was written)"
            )
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; the output is a file")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputError(f"{out}: exists; pass --overwrite to replace it, or choose another output")
