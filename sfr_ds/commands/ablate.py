"""``sfr-ds ablate CONFIG``: the SFR-Embedding-Mistral ablation tables, one run directory per row."""

from __future__ import annotations

import click


@click.command("ablate", context_settings={"ignore_unknown_options": True})
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--study", "only", multiple=True, help="Run only this study (repeatable).")
@click.option(
    "--plan",
    "show_plan",
    is_flag=True,
    help="Print every stage (done, or to do with its command), what is left and its rough cost; run nothing.",
)
def command(config, overrides, only, show_plan):
    """Mine, train and evaluate every row of the studies in CONFIG (e.g. configs/ablations_cpu.yaml),
    then write one table per study in the layout of the SFR-Embedding-Mistral paper's tables (groups
    and AVG as rows). Finished stages are skipped, so the same command continues an interrupted set.
    OVERRIDES (key=value) apply to CONFIG.
    """
    from ..ablate import describe_plan, load_ablate_config, plan, run_ablations
    from ..config import ConfigError

    try:
        cfg, studies = load_ablate_config(config, list(overrides))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if unknown := [s for s in only if s not in studies]:
        raise click.UsageError(f"unknown study {', '.join(unknown)}; known: {', '.join(studies)}")
    if only:
        studies = {name: studies[name] for name in only}
    if show_plan:
        click.echo(describe_plan(plan(cfg, studies)[0]))
        return
    try:
        click.echo(run_ablations(cfg, studies))
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"tables: {cfg.output_dir}/ablations.md")
