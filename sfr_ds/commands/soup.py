"""``sfr-ds soup INPUT... --out DIR``: several adapters over one base made into one model."""

from __future__ import annotations

import click

from . import options
from .merge import ShardSize


def _weights(ctx, param, value: str | None) -> list[float] | None:
    """--weights 0.5,0.3,0.2 -> [0.5, 0.3, 0.2]; anything but numbers is a usage error naming the option."""
    if value is None:
        return None
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not comma-separated numbers such as 0.5,0.3,0.2") from None


@click.command("soup")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@options.folder("--out", "Folder for the soup (new or empty).", required=True)
@click.option(
    "--method",
    type=click.Choice(["linear", "slerp"]),
    default="linear",
    show_default=True,
    help="linear: a weighted average, written as one LoRA adapter (exact); slerp: two inputs, "
    "written as full merged weights.",
)
@click.option(
    "--weights",
    callback=_weights,
    help="linear: one weight > 0 per input, comma-separated, divided by their sum (default: equal).",
)
@click.option(
    "--last",
    type=int,
    default=None,
    metavar="K",
    help="One run as input: soup its K newest checkpoints (train with run.keep_checkpoints >= K).",
)
@click.option(
    "--t", type=float, default=None, help="slerp: the interpolation factor in [0, 1] (default 0.5)."
)
@click.option(
    "--select-by",
    metavar="SUITE",
    help="linear: evaluate the inputs, the uniform soup and the greedy soup (and --weights' soup) on "
    "this suite (e.g. mini) and keep the best by AVG.",
)
@options.folder(
    "--data-root", "Data folder of a local suite for --select-by (default $SFR_DS_DATA).", exists=True
)
@options.folder("--work", "--select-by: candidates and evaluations, kept for a rerun (default OUT.select).")
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16"]),
    default=None,
    help="slerp: dtype of the merged weights (default: the first input's model.dtype).",
)
@click.option(
    "--max-shard-size", type=ShardSize(), default="2GB", show_default=True, help="slerp: largest shard."
)
@click.option(
    "--query-instruction", default=None, help="slerp: instruction of the sentence-transformers query prompt."
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="slerp: load the written folder and embed probe texts.",
)
def command(
    inputs,
    out,
    method,
    weights,
    last,
    t,
    select_by,
    data_root,
    work,
    dtype,
    max_shard_size,
    query_instruction,
    verify,
):
    """Soup INPUTS (runs, adapter folders or checkpoints over one base model) into OUT.

    \b
    sfr-ds soup RUN_A RUN_B RUN_C --out SOUP                  uniform average, one LoRA adapter
    sfr-ds soup A B C --weights 2,1,1 --out SOUP              weighted (weights divided by their sum)
    sfr-ds soup A B --method slerp --t 0.3 --out SOUP         full merged weights
    sfr-ds soup A B C --select-by mini --out SOUP             the best of inputs, uniform and greedy soups
    sfr-ds soup RUN --last 3 --out SOUP                       the run's 3 newest checkpoints

    A linear soup is exact: the weighted average of the merged models is itself a LoRA adapter whose
    rank is the sum of the inputs' ranks; sfr-ds eval reads it, sfr-ds merge makes it full weights.
    Inputs must share base model, LoRA layers and encoding settings; every input is checked first.
    """
    from ..merge import MergeError
    from ..soup import soup

    eval_args = None
    if select_by:
        eval_args = ["--suite", select_by] + (["--data-root", data_root] if data_root else [])
    elif data_root:
        raise click.UsageError("--data-root is for --select-by")
    if method == "slerp" and t is None:
        t = 0.5
    try:
        report = soup(
            inputs,
            out,
            method,
            weights,
            t,
            eval_args,
            work,
            dtype,
            max_shard_size,
            query_instruction,
            verify,
            last=last,
        )
    except MergeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(report.message)
