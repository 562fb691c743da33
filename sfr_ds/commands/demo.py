"""``sfr-ds demo``: the whole recipe on bundled real data, on this machine, with a before/after table."""

from __future__ import annotations

import click

from . import options

TEACHER = "Mining teacher: builtin:minilm | bm25 | a model path | self:RUN_DIR."


@click.command("demo", context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@click.option("--output-dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@options.file("--config", "Training config [default: configs/demo.yaml, SmolLM2-135M].")
@click.option("--teacher", default="builtin:minilm", show_default=True, help=TEACHER)
@options.count("--records-per-dataset", 128, "Training records taken from each bundled dataset.")
@options.rank_window("Negatives' rank window [MIN, MAX) of the teacher.")
@options.count("--k", 7, "Negatives mined per query.")
@options.nproc_per_node("Training ranks [default: every GPU, else 2 CPU ranks].")
def command(overrides, output_dir, config, teacher, records_per_dataset, window, k, nproc_per_node):
    """Prepare -> mine (MiniLM teacher) -> evaluate -> train SmolLM2-135M (2 ranks, ZeRO-2,
    GradCache, task-homogeneous batches) -> merge -> evaluate; prints the before/after table.

    OVERRIDES (key=value) go to the training config. Run the same command again to continue an
    interrupted demo: finished stages are skipped.
    """
    from ..demo import DemoOptions, run_demo

    options = DemoOptions(
        teacher=teacher,
        records_per_dataset=records_per_dataset,
        window=window,
        k=k,
        nproc=nproc_per_node,
        train_overrides=list(overrides),
    )
    if config:
        options.config = config
    from ..config import ConfigError

    try:
        run_demo(output_dir, options)
    except (RuntimeError, ConfigError) as e:
        raise click.ClickException(str(e)) from None
