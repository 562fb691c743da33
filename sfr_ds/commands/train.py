"""``sfr-ds train``: LoRA contrastive fine-tuning under DeepSpeed, here or on N local ranks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import options


def _split_args(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """(CONFIG or None, key=value overrides)."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option(
    "--output-dir", type=click.Path(file_okay=False), help="Run directory (overrides run.output_dir)."
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in the output directory from its latest checkpoint."
)
@options.nproc_per_node("Start N local ranks (torchrun) instead of running in this process.")
def command(args, output_dir, resume, nproc_per_node):
    """Train: sfr-ds train CONFIG [key=value ...] [--output-dir DIR] [--resume] [--nproc-per-node N].

    With --resume and no CONFIG the run's own run.yaml is used.
    """
    from ..config import ConfigError, load_config
    from ..data.records import RecordError

    config_path, overrides = _split_args(args)
    if nproc_per_node and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        from ..dist import spawn_local

        argv = [
            *args,
            *(["--output-dir", output_dir] if output_dir else []),
            *(["--resume"] if resume else []),
        ]
        sys.exit(spawn_local(nproc_per_node, "train", argv))
    if output_dir:
        overrides.append(f"run.output_dir={Path(output_dir).resolve()}")
    try:
        if config_path is None:
            if not (resume and output_dir):
                raise click.UsageError("give a CONFIG, or --resume with --output-dir of an existing run")
            config_path = str(Path(output_dir) / "run.yaml")
        cfg = load_config(config_path, overrides)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    from ..dist import cleanup
    from ..run_dir import RunDirError
    from ..train import train

    try:
        train(cfg, resume=resume)
    except (ConfigError, RecordError, RunDirError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        cleanup()
