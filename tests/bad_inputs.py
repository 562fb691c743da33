"""The bad-input harness: a command given a user's mistake must refuse it in one clear message
(exit status non-zero, no traceback, naming the file and line or field) and leave every file that
was there byte for byte as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import sfr_ds


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def refused(*args, where: Path, says=(), env: dict | None = None, timeout: int = 120):
    """Run ``sfr-ds ARGS``; it must fail cleanly, say every string of ``says``, and leave every
    file under ``where`` as it was (new files are allowed only where the command says so)."""
    before = hashes(where)
    p = sfr_ds(*args, env=env, timeout=timeout, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0, f"sfr-ds {' '.join(map(str, args))} succeeded:\n{out[-3000:]}"
    assert "Traceback" not in out, f"a traceback for a user's mistake:\n{out[-4000:]}"
    for needle in [says] if isinstance(says, str) else says:
        assert str(needle) in out, f"{needle!r} not in the message:\n{out[-3000:]}"
    after = hashes(where)
    changed = [f for f, h in before.items() if after.get(f) != h]
    assert not changed, f"files changed or removed: {changed}"
    return p
