"""``sfr-ds prepare``: raw sources (BEIR, STS, labelled CSV) to one training JSONL.

One source can be named on the command line; several go in a small YAML (``sfr_ds.data.sources``
documents it). The output is refused before anything is converted when it is one of the inputs
or, without ``--overwrite``, an existing file; it is written atomically.
"""

from __future__ import annotations

import click

from sfr_ds.data.records import write_jsonl
from sfr_ds.data.sources import Source, SourceArgsError, convert_all, gather
from sfr_ds.io import check_output

from . import options


@click.command("prepare")
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL.")
@click.option(
    "--beir",
    type=click.Path(exists=True, file_okay=False),
    help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).",
)
@click.option("--split", default="train", show_default=True, help="BEIR qrels split.")
@options.file("--sts", "STS-benchmark CSV.")
@options.file("--labelled", "CSV with text,category columns (labels as documents).")
@click.option(
    "--task-type",
    type=click.Choice(["classification", "clustering"]),
    default="classification",
    show_default=True,
)
@click.option(
    "--format",
    "labelled_format",
    type=click.Choice(["labels", "examples"]),
    default=None,
    help="--labelled records: labels (pos = its label, neg = other labels) or examples (pos = another "
    "example of its class, neg = examples of other classes)  [default: labels]",
)
@click.option("--dataset", help="Dataset name (picks the instruction) [default: BEIR folder name].")
@click.option(
    "--instruction",
    "instructions",
    multiple=True,
    metavar="DATASET=TEXT",
    help="Instruction for a dataset, over the built-in table (repeatable).",
)
@options.overwrite
def command(
    config, out, beir, split, sts, labelled, task_type, labelled_format, dataset, instructions, overwrite
):
    """Write one training JSONL: sfr-ds prepare [SOURCES.yaml] [--beir|--sts|--labelled PATH] --out OUT.

    Prints records written and source items skipped, by reason, per source.
    """
    cli = dict(beir=beir, sts=sts, labelled=labelled, dataset=dataset, split=split, task_type=task_type)
    try:
        sources, overrides = gather(config, cli, instructions)
    except SourceArgsError as e:
        raise click.UsageError(str(e)) from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if labelled_format is not None:
        if not labelled:
            raise click.UsageError("--format applies to --labelled (in a YAML, give format: per source)")
        sources[-1].options["format"] = labelled_format
    try:
        check_output(out, _inputs(config, sources), overwrite)
        records = convert_all(sources, overrides, click.echo)
        click.echo(f"wrote {write_jsonl(records, out)} records to {out}")
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None


def _inputs(config: str | None, sources: list[Source]) -> list:
    """Every file the command reads: the sources YAML and each source's files."""
    return ([config] if config else []) + [f for source in sources for f in source.inputs()]
