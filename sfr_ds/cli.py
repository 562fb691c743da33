"""The ``sfr-ds`` command line: each command reads its options and calls one function."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .config import ConfigError
from .data.records import RecordError


@click.group()
@click.version_option(package_name="sfr-ds")
def main():
    """Train SFR-Embedding-Mistral-style text embedding models on DeepSpeed and Slurm."""


def _split_args(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option(
    "--output-dir", type=click.Path(file_okay=False), help="Run directory (overrides run.output_dir)."
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in the output directory from its latest checkpoint."
)
@click.option(
    "--nproc-per-node",
    type=int,
    default=None,
    help="Start N local ranks (torchrun) instead of running in this process.",
)
def train(args, output_dir, resume, nproc_per_node):
    """Train: sfr-ds train CONFIG [key=value ...] [--output-dir DIR] [--resume] [--nproc-per-node N].

    With --resume and no CONFIG the run's own run.yaml is used.
    """
    config_path, overrides = _split_args(args)
    if nproc_per_node and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        from .dist import spawn_local

        argv = [
            *args,
            *(["--output-dir", output_dir] if output_dir else []),
            *(["--resume"] if resume else []),
        ]
        sys.exit(spawn_local(nproc_per_node, "train", argv))
    from .config import load_config

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
    from .train import train as run_training

    try:
        run_training(cfg, resume=resume)
    except (ConfigError, RecordError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        from .dist import cleanup

        cleanup()


def _add_commands() -> None:
    import importlib
    import pkgutil

    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        main.add_command(importlib.import_module(f"{commands.__name__}.{info.name}").command)


_add_commands()

if __name__ == "__main__":
    main()
