"""Options several commands share, defined once so that they read and check the same everywhere."""

from __future__ import annotations

import click


def count(name: str, default: int | None, help: str, **kw):
    """A whole number >= 1 (a bad value is a one-line usage error, never a traceback)."""
    return click.option(name, type=click.IntRange(min=1), default=default, show_default=True, help=help, **kw)


def folder(name: str, help: str, *, exists: bool = False, **kw):
    return click.option(name, type=click.Path(file_okay=False, exists=exists), help=help, **kw)


def file(name: str, help: str, *, exists: bool = True, **kw):
    return click.option(name, type=click.Path(dir_okay=False, exists=exists), help=help, **kw)


def repeated(name: str, dest: str, help: str):
    """An option given any number of times, collected into ``dest``."""
    return click.option(name, dest, multiple=True, help=help)


def rank_window(help: str):
    """``--range MIN MAX``: the teacher's ranks hard negatives are drawn from (the SFR recipe: 30-100)."""
    return click.option(
        "--range", "window", nargs=2, type=int, default=(30, 100), show_default=True, help=help
    )


def nproc_per_node(help: str, default: int | None = None):
    return count("--nproc-per-node", default, help)


overwrite = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --out file (never one of the inputs, which is always refused).",
)
progress = click.option("--progress/--no-progress", default=True, show_default=True)


def packing(max_tokens: int | None, padded: bool) -> int | str | None:
    """How texts are batched for encoding (``encode.TextEncoder``'s ``max_tokens``): ``--padded``,
    ``--max-tokens N`` (packed), or neither: ``"auto"`` (packed on GPU, padded on CPU)."""
    if padded and max_tokens:
        raise click.UsageError("--padded and --max-tokens exclude each other (--max-tokens packs)")
    return None if padded else (max_tokens or "auto")
