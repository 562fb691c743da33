"""``sfr-ds mine``: fill a training JSONL's negatives from a teacher's ranking."""

from __future__ import annotations

import os
import sys

import click

from sfr_ds.zoo import cache_dir

from . import options

# Rank 0 searches alone between collectives while the other ranks wait for it at the next
# dataset's encoding (from-records), so the process-group timeout must outlast a search.
DIST_TIMEOUT_S = 6 * 3600


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
@options.rank_window("Rank window [MIN, MAX) after removing positives, 0-based.")
@options.count("--k", 7, "Negatives per query.")
@click.option(
    "--margin",
    type=float,
    default=None,
    help="Drop candidates scoring >= MARGIN x the positive's score (e.g. 0.95).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draw of k.")
@options.repeated(
    "--dataset", "datasets", "Mine only records of this dataset (repeatable); others pass through."
)
@options.folder("--cache-dir", "Embedding cache [default: ($SFR_DS_CACHE or ~/.cache/sfr_ds)/embeddings].")
@options.count("--batch-size", 32, "Texts per forward.")
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
    window,
    k,
    margin,
    seed,
    datasets,
    cache_dir,
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
    from sfr_ds import dist

    if nproc_per_node and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        sys.exit(dist.spawn_local(nproc_per_node, "mine", _argv(ctx)))
    from sfr_ds.mining.mine import MineOptions, mine_file
    from sfr_ds.mining.teachers import CacheOptions, EncodeOptions, make_teacher

    try:
        options = MineOptions(window[0], window[1], k, margin, seed, tuple(datasets))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    encode = EncodeOptions(pooling, query_max_len, doc_max_len, dtype, batch_size, query_instruction)
    cache = CacheOptions(_cache_root(cache_dir), shard_size, progress)
    dist.setup(DIST_TIMEOUT_S)
    try:
        report = mine_file(input, corpus, make_teacher(teacher, encode, cache), out, options)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        dist.cleanup()
    if report is not None:
        click.echo(str(report))
        click.echo(f"wrote {out}")


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
            argv.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            for one in value if param.multiple else [value]:
                argv += [param.opts[0], *map(str, one if param.nargs > 1 else [one])]
    return argv
