"""``sfr-ds train``: LoRA contrastive fine-tuning under DeepSpeed, here or on N local ranks."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
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
    cfg = _config(args, output_dir, resume)  # every config mistake found here, before any rank starts
    if nproc_per_node and not _launched():
        from ..data.step_inputs import per_rank_queries
        from ..dist import spawn_local

        with _one_line():
            per_rank_queries(cfg, nproc_per_node)
        argv = [
            *args,
            *(["--output-dir", output_dir] if output_dir else []),
            *(["--resume"] if resume else []),
        ]
        sys.exit(spawn_local(nproc_per_node, "train", argv))
    from ..dist import cleanup
    from ..train import train

    try:
        with _one_line():
            train(cfg, resume=resume)
    finally:
        cleanup()


def _launched() -> bool:
    """This process is one rank of a launcher (torchrun, the deepspeed launcher, srun)."""
    return "RANK" in os.environ or "SLURM_PROCID" in os.environ


def _config(args: tuple[str, ...], output_dir: str | None, resume: bool):
    from ..config import load_config

    config_path, overrides = _split_args(args)
    if output_dir:
        overrides.append(f"run.output_dir={Path(output_dir).resolve()}")
    if config_path is None:
        if not (resume and output_dir):
            raise click.UsageError("give a CONFIG, or --resume with --output-dir of an existing run")
        config_path = str(Path(output_dir) / "run.yaml")
        if not Path(config_path).is_file():
            raise click.UsageError(
                f"--resume: {output_dir} has no run.yaml (not an sfr-ds run); give a CONFIG"
            )
    with _one_line():
        return load_config(config_path, overrides)


@contextmanager
def _one_line():
    """A user's mistake (config, data, run folder) as one clean error. Every rank meets the same
    mistake, so only rank 0 says it; the others just exit with the same status."""
    from ..config import ConfigError
    from ..data.records import RecordError
    from ..run_dir import RunDirError

    try:
        yield
    except (ConfigError, RecordError, RunDirError) as e:
        if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) != 0:
            sys.exit(1)
        raise click.ClickException(str(e)) from None
