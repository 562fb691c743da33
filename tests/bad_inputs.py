"""The bad-input harness: a command given a user's mistake must refuse it in one clear message
(exit status non-zero, no traceback, naming the file and line or field) and leave every file that
was there byte for byte as it was.

A case runs the real `sfr-ds` command in this process through click's test runner (a mistake is
found before any work, so this is what a user's process does, at a tenth of the cost of a new
interpreter); any exception other than click's exit counts as the traceback a user would see.
``process=True`` runs it in a fresh process instead, for cases that start ranks or must see the
command's real streams (``SFR_DS_BAD_INPUTS_IN_PROCESS=0`` does so for every case).
"""

from __future__ import annotations

import hashlib
import os
import signal
import traceback
from pathlib import Path
from types import SimpleNamespace

from conftest import sfr_ds

IN_PROCESS = os.environ.get("SFR_DS_BAD_INPUTS_IN_PROCESS", "1") != "0"


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def in_process(args: list, env: dict | None):
    """``sfr-ds ARGS`` through click's runner: (exit status, stdout, stderr + any traceback)."""
    from click.testing import CliRunner

    from sfr_ds.cli import main

    # a command may set RANK & co. for its process group, and preemption signal handlers: not for
    # the next case, nor for the rest of the test session
    saved_env, signals = dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        result = CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=True)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for number, handler in signals.items():
            signal.signal(number, handler)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # what a user would see
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=stderr)


def refused(*args, where: Path, says=(), env: dict | None = None, timeout: int = 120, process: bool = False):
    """Run ``sfr-ds ARGS``; it must fail cleanly, say every string of ``says``, and leave every
    file under ``where`` as it was (new files are allowed only where the command says so)."""
    before = hashes(where)
    if process or not IN_PROCESS:
        p = sfr_ds(*args, env=env, timeout=timeout, check=False)
    else:
        p = in_process(list(args), env)
    out = p.stdout + p.stderr
    assert p.returncode != 0, f"sfr-ds {' '.join(map(str, args))} succeeded:\n{out[-3000:]}"
    assert "Traceback" not in out, f"a traceback for a user's mistake:\n{out[-4000:]}"
    for needle in [says] if isinstance(says, str) else says:
        assert str(needle) in out, f"{needle!r} not in the message:\n{out[-3000:]}"
    after = hashes(where)
    changed = [f for f, h in before.items() if after.get(f) != h]
    assert not changed, f"files changed or removed: {changed}"
    return p
