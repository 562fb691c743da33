"""``sfr-ds mine``: fill a training JSONL's negatives from a teacher's ranking.

Everything the user gave is checked before any work, most of it before torch is imported
(``mining.plan``): the output (never one of the inputs; an existing file only with ``--overwrite``),
the settings, the records, the corpus, then the mining extra and the teacher. Mining can take
hours; a mistake in any of these is one line at once.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import click

from sfr_ds.io import check_output
from sfr_ds.zoo import cache_dir

from . import options
from .options import packing

# Rank 0 searches alone between collectives while the other ranks wait for it at the next
# dataset's encoding (from-records), so the process-group timeout must outlast a search.
DIST_TIMEOUT_S = 6 * 3600
MINING_EXTRA = ("faiss", "bm25s")  # what `pip install -e ".[mining]"` adds


@click.command("mine")
@click.argument("input", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--corpus",
    required=True,
    help="A BEIR corpus.jsonl (positives dropped by pos_ids), or 'from-records': each "
    "dataset's own pos/neg texts.",
)
@click.option(
    "--teacher", required=True, help="bm25 | builtin:minilm | a model path (plain HF encoder) | self:RUN_DIR."
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL.")
@options.overwrite
@options.rank_window("Rank window [MIN, MAX) after removing positives, 0-based.")
@options.count("--k", 7, "Negatives per query.")
@click.option(
    "--cap",
    default=None,
    callback=lambda ctx, param, value: _cap(value),
    help="Positive-aware filter on the window's candidates (NV-Retriever): relative:0.95 drops those "
    "scoring >= 0.95 x the positive's score, absolute:0.05 those scoring >= the positive's - 0.05.",
)
@click.option(
    "--margin", type=float, default=None, help="The same as --cap relative:MARGIN (kept for old scripts)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draw of k.")
@options.repeated(
    "--dataset", "datasets", "Mine only records of this dataset (repeatable); others pass through."
)
@options.folder("--cache-dir", "Embedding cache [default: ($SFR_DS_CACHE or ~/.cache/sfr_ds)/embeddings].")
@options.count(
    "--max-tokens", None, "Pack texts longest first into chunks of N real tokens (default: 8192 on GPU)."
)
@click.option("--padded", is_flag=True, help="Padded batches of --batch-size texts (the default on CPU).")
@options.count("--batch-size", 32, "Texts per padded batch (with --padded).")
@options.count("--shard-size", 4096, "Texts per cached shard: the unit of work per rank and of resume.")
@click.option(
    "--pooling",
    type=click.Choice(["auto", "mean", "last", "cls"]),
    default="auto",
    show_default=True,
    help="Model teachers: auto = last for causal LMs, else mean.",
)
@click.option(
    "--query-instruction",
    default=None,
    help="Replace each record's instruction for the teacher ('' = bare query).",
)
@click.option("--query-max-len", type=int, default=None, help="[default: run's, else 128]")
@click.option("--doc-max-len", type=int, default=None, help="[default: run's, else 256]")
@click.option(
    "--dtype", type=click.Choice(["fp32", "bf16"]), default=None, help="[default: bf16 on GPU, fp32 on CPU]"
)
@options.progress
@options.nproc_per_node("Start N local ranks (torchrun) that share the corpus encoding.")
@click.pass_context
def command(
    ctx: click.Context,
    input,
    corpus,
    teacher,
    out,
    overwrite,
    window,
    k,
    cap,
    margin,
    seed,
    datasets,
    cache_dir,
    max_tokens,
    padded,
    batch_size,
    shard_size,
    pooling,
    query_instruction,
    query_max_len,
    doc_max_len,
    dtype,
    progress,
    nproc_per_node,
):
    """Mine hard negatives: sfr-ds mine INPUT.jsonl --corpus C --teacher T --out OUT.jsonl.

    Prints the teacher's recall@100 on the mined queries and how many got fewer than k.
    """
    from sfr_ds.mining.plan import MineOptions, check_teacher, corpus_file, plan_file

    if cap is not None and margin is not None:
        raise click.UsageError("give --cap or --margin (the same as --cap relative:MARGIN), not both")
    try:
        options = MineOptions(window[0], window[1], k, cap or margin, seed, tuple(datasets))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    with _one_line():
        check_output(out, [input, *filter(None, [corpus_file(corpus)])], overwrite, _teacher_folders(teacher))
        plan = plan_file(input, corpus, options)
        check_teacher(teacher, pooling)
    mine, teachers = _mining_modules()
    encode = teachers.EncodeOptions(
        pooling,
        query_max_len,
        doc_max_len,
        dtype,
        batch_size,
        query_instruction,
        packing(max_tokens, padded),
    )
    cache = teachers.CacheOptions(_cache_root(cache_dir), shard_size, progress)
    with _one_line():
        teacher_ = teachers.make_teacher(teacher, encode, cache)
    from sfr_ds import dist

    if nproc_per_node and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        sys.exit(dist.spawn_local(nproc_per_node, "mine", _argv(ctx)))
    dist.setup(DIST_TIMEOUT_S)
    try:
        with _one_line():
            report = mine.mine_plan(plan, teacher_, options)
            if report is not None:
                mine.write_mined(plan.records, out)
    finally:
        dist.cleanup()
    if report is not None:
        click.echo(str(report))
        click.echo(f"wrote {out}")


def _cap(value: str | None):
    """``--cap KIND:VALUE`` as a ``Cap``; a bad one is a one-line error naming the option."""
    if value is None:
        return None
    from sfr_ds.mining.select import Cap

    try:
        return Cap.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--cap'") from None


@contextmanager
def _one_line():
    """A user's mistake (bad records or corpus, a damaged teacher folder, an output that would
    destroy a file) as one ``Error:`` line: these are ValueErrors (RecordError, RunDirError...)
    or OSErrors naming their file."""
    try:
        yield
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None


def _mining_modules():
    """``sfr_ds.mining.mine`` and ``teachers``; without the mining extra, how to install it."""
    try:
        from sfr_ds.mining import mine, teachers
    except ImportError as e:
        missing = e.name if e.name in MINING_EXTRA else next((m for m in MINING_EXTRA if m in str(e)), None)
        if missing is None:
            raise
        raise click.ClickException(
            f'mining needs {missing}, which cannot be imported ({e}): pip install -e ".[mining]"'
        ) from None
    return mine, teachers


def _teacher_folders(spec: str) -> list[str]:
    """The model folder a teacher reads (an output must not land inside it)."""
    path = spec.removeprefix("self:")
    return [path] if os.path.isdir(path) else []


def _cache_root(given: str | None):
    return cache_dir() / "embeddings" if given is None else os.path.abspath(given)


def _argv(ctx: click.Context) -> list[str]:
    """This command's parameters as a command line again, without --nproc-per-node."""
    argv: list[str] = []
    for param in ctx.command.params:
        value = ctx.params[param.name]
        if param.name == "nproc_per_node" or value is None:
            continue
        if isinstance(param, click.Argument):
            argv.append(str(value))
        elif getattr(param, "is_flag", False):
            argv += [param.opts[0]] if value else param.secondary_opts[:1]
        else:
            for one in value if param.multiple else [value]:
                argv += [param.opts[0], *map(str, one if param.nargs > 1 else [one])]
    return argv
