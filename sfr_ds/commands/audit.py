"""``sfr-ds audit-negatives``: the false-negative rate of each mining policy, as a markdown table.

A command of its own rather than ``sfr-ds mine --audit``: it writes no training file, reads
labelled and retrieval data side by side, and runs four policies over one ranking per teacher,
none of which fits ``mine``'s one-input, one-policy, one-output shape.
"""

from __future__ import annotations

from pathlib import Path

import click

from sfr_ds.io import atomic_write, check_output

from . import options

BUNDLED = Path(__file__).resolve().parents[1] / "resources" / "data"


@click.command("audit-negatives")
@options.file(
    "--labelled",
    "Training JSONL of a classification dataset with a 'label' field.",
    default=str(BUNDLED / "banking77_train.jsonl"),
    show_default="bundled Banking77",
)
@options.file(
    "--retrieval",
    "Training JSONL of retrieval records; those with 2+ positives are audited.",
    default=str(BUNDLED / "scifact_train.jsonl"),
    show_default="bundled SciFact",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    default=("bm25",),
    show_default=True,
    help="bm25 | builtin:minilm | a model path | self:RUN_DIR (repeatable).",
)
@options.count("--k", 7, "Negatives per query.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the hidden positive and the draw."
)
@options.folder("--cache-dir", "Embedding cache [default: ($SFR_DS_CACHE or ~/.cache/sfr_ds)/embeddings].")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the table here.")
@options.overwrite
def command(labelled, retrieval, teachers, k, seed, cache_dir, out, overwrite):
    """Print the false-negative rate of naive top-k, the 30-100 window, the relative 0.95 cap and
    window + cap, per teacher, on labelled data (exact) and retrieval data (one hidden positive)."""
    from sfr_ds.data.records import read_jsonl

    from .mine import _cache_root, _mining_modules, _one_line

    with _one_line():
        if out is not None:
            check_output(out, [labelled, retrieval], overwrite)
        records = [read_jsonl(labelled), read_jsonl(retrieval)]
    _, teachers_mod = _mining_modules()
    from sfr_ds.mining import audit

    with _one_line():
        tasks = [audit.labelled_task(records[0], seed), audit.hidden_positive_task(records[1], seed)]
    cache = teachers_mod.CacheOptions(_cache_root(cache_dir), progress=False)
    rows = []
    for spec in teachers:
        with _one_line():
            teacher = teachers_mod.make_teacher(spec, teachers_mod.EncodeOptions(), cache)
        for task in tasks:
            rows += audit.audit(task, teacher, k, seed)
    text = audit.table(rows, k)
    click.echo(text)
    if out is not None:
        atomic_write(Path(out), text + "\n")
        click.echo(f"wrote {out}")
