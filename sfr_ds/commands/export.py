"""``sfr-ds export CHECKPOINT --out DIR``: a checkpoint (any step, any ZeRO stage) as a PEFT adapter."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the adapter.")
def command(checkpoint, out):
    """Write CHECKPOINT's LoRA weights as a PEFT adapter folder in OUT.

    CHECKPOINT is <run>/checkpoints/step-NNNNNNNN, or <run> / <run>/checkpoints for the latest one.
    OUT works with `sfr-ds merge` and TextEncoder.from_run, like <run>/final. OUT must be new or
    empty; every file of CHECKPOINT is read with torch.load(weights_only=True) before anything is
    written, and one that would run code, or is truncated, is refused by name.
    """
    from ..export import ExportError, export

    try:
        path = export(checkpoint, out)
    except (ExportError, OSError) as e:  # OSError: OUT cannot be written
        raise click.ClickException(str(e)) from None
    click.echo(f"adapter written to {path}")
