"""``sfr-ds rounds``: submit (or continue) mining-then-training rounds; ``--status`` reports them."""

from __future__ import annotations

import click

from . import options


@click.command(name="rounds", context_settings={"ignore_unknown_options": True})
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--status", is_flag=True, help="Report each stage's state and submit nothing.")
@click.option("--local", is_flag=True, help="Run the stages here one after another instead of on Slurm.")
@options.nproc_per_node("Training ranks with --local.", default=1)
def command(config, overrides, status, local, nproc_per_node):
    """Per round: mine -> train -> eval (dependent Slurm jobs). Re-run the same command after a
    failure: complete stages are skipped, queued ones reused, the rest submitted."""
    from sfr_ds import rounds
    from sfr_ds.config import ConfigError

    try:
        cfg = rounds.load_rounds_config(config, list(overrides))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    try:
        if status:
            click.echo("\n".join(rounds.status(cfg)))
        elif local:
            rounds.run_local(cfg, nproc_per_node)
        else:
            click.echo("\n".join(rounds.submit(cfg)))
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
