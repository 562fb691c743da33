"""``sfr-ds eval``: MTEB and local evaluation, here or as a Slurm job array, and result tables.

``sfr-ds eval MODEL --tasks ...`` is short for ``sfr-ds eval run MODEL --tasks ...``. Only
``run`` (without --slurm), ``worker`` and ``lengths`` load a model; the rest is light enough for
a login node.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from . import options
from .options import packing


class _RunByDefault(click.Group):
    """``sfr-ds eval MODEL ...`` runs ``run`` when the first word is not a sub-command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(name="eval", cls=_RunByDefault)
def command():
    """Evaluate models on MTEB tasks and local data; compare them; run on Slurm.

    \b
    sfr-ds eval MODEL --tasks SciFact,sts:DIR/sts-test.csv   evaluate here
    sfr-ds eval MODEL --suite dev --data-root DATA --slurm   submit a job array
    sfr-ds eval status OUT | collect OUT | resubmit OUT      follow a Slurm evaluation
    sfr-ds eval compare OUT_A OUT_B                          side by side, with deltas
    sfr-ds eval lengths MODEL_A MODEL_B --task retrieval:DIR rank difference by length
    """


@contextmanager
def _clean_errors() -> Iterator[None]:
    """A user's mistake (a bad task spec or data file, a broken model folder, a folder that is no
    evaluation, Slurm) as one clean ``Error:`` line rather than a traceback: every such error of
    sfr_ds.eval is a ValueError naming the file, line and field."""
    from sfr_ds.slurm import SlurmError

    try:
        yield
    except (ValueError, SlurmError) as e:
        raise click.ClickException(str(e)) from None


def _require_extra(*modules: str) -> None:
    """The eval extra's packages, installed; else how to install them (not a traceback). Found,
    not imported: importing mteb takes seconds, and a user's mistake should be told at once."""
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise click.ClickException(
                f"sfr-ds eval needs {module}, which is not installed: "
                f"pip install 'sfr-ds[eval]' (mteb, sentence-transformers, matplotlib)"
            )


_INSTRUCTIONS = (
    "Instructions on queries and symmetric tasks. Default by model kind: on for sfr-ds runs and "
    "decoders, off for BERT-like encoders."
)
_POOLING = (
    "HF models only (default: sentence-transformers config, else mean for encoders, last for decoders)."
)
_MODEL_OPTIONS = [
    click.option("--instructions/--no-instruction", default=None, help=_INSTRUCTIONS),
    click.option("--pooling", type=click.Choice(["last", "mean", "cls"]), help=_POOLING),
    options.count("--query-max-len", None, "Default 512 (or the model's max_seq_length)."),
    options.count("--doc-max-len", None, "Default 512 (or the model's max_seq_length)."),
    click.option("--dtype", type=click.Choice(["bf16", "fp32"]), help="Default bf16 on GPU, fp32 on CPU."),
    options.count(
        "--max-tokens", None, "Pack texts longest first into chunks of N real tokens (default: 8192 on GPU)."
    ),
    click.option("--padded", is_flag=True, help="Padded batches of --batch-size texts (the default on CPU)."),
    options.count("--batch-size", 32, "Texts per padded batch (with --padded)."),
    options.folder("--cache-dir", "Embedding cache root (default $SFR_DS_CACHE/eval-embeddings)."),
]


def _model_options(f):
    """How the model reads texts; the command receives them as ``**model_options`` (see ``_spec``)."""
    for option in reversed(_MODEL_OPTIONS):
        f = option(f)
    return f


def _spec(source: str, model: dict):
    """The model spec of the model options (``cache_dir`` is not part of it)."""
    from sfr_ds.eval.models import model_spec

    spec = {k: v for k, v in model.items() if k not in ("cache_dir", "padded", "max_tokens")}
    return model_spec(source, **spec, max_tokens=packing(model["max_tokens"], model["padded"]))


@command.command()
@click.argument("model")
@click.option(
    "--tasks",
    "task_values",
    multiple=True,
    help="MTEB task names, benchmark:NAME, or KIND:PATH[?key=value] local tasks "
    "(kinds: retrieval, sts, classification, clustering, reranking); comma-separated or repeated.",
)
@click.option("--suite", help="A named task suite (dev: the SFR recipe's dev report on local data).")
@options.folder("--data-root", "Data folder of a local suite (default $SFR_DS_DATA).", exists=True)
@options.folder("--output-dir", "Default: RUN/eval for a local model folder, else ./eval/NAME.")
@_model_options
@click.option(
    "--dims",
    callback=lambda ctx, param, value: _dims(value),
    help="Also score every task at these leading dimensions (Matryoshka), from the same encoding, "
    "e.g. --dims 1024,256.",
)
@click.option("--slurm", is_flag=True, help="Submit a Slurm job array and return at once.")
@options.count("--tasks-per-job", 1, "Tasks per array element.")
@options.repeated(
    "--sbatch", "sbatch_values", 'Extra sbatch options, e.g. --sbatch "--partition=gpu --time=4:00".'
)
@options.count("--max-parallel", None, "At most N array elements at once.")
@options.progress
def run(
    model,
    task_values,
    suite,
    data_root,
    output_dir,
    slurm,
    tasks_per_job,
    sbatch_values,
    max_parallel,
    progress,
    dims,
    **model_options,
):
    """Evaluate MODEL (a run directory, an adapter folder, a merged or any HF model, builtin:NAME)."""
    _require_extra("mteb")
    from sfr_ds.eval.runner import data_lines, default_out, prepare, task_indices
    from sfr_ds.eval.slurm import check_script_path
    from sfr_ds.eval.suite import requested_entries

    with _clean_errors():
        spec = _spec(model, model_options)
        entries = requested_entries(task_values, suite, data_root)
        if not entries:
            raise click.UsageError("name tasks with --tasks and/or --suite")
        out = Path(output_dir or default_out(spec.source)).resolve()
        if slurm:
            check_script_path(out)
        # a Slurm submit reads each file's first row only; its elements read the rest
        manifest = prepare(out, spec, entries, model_options["cache_dir"], read_all=not slurm, dims=dims)
        indices = task_indices(manifest, entries)
        for line in data_lines(entries):
            click.echo(f"[sfr-ds eval] {line}", err=line.startswith("WARNING"))
    if slurm:
        _submit(out, indices, tasks_per_job, sbatch_values, max_parallel)
    else:
        _evaluate(out, indices, progress)


def _dims(value: str | None) -> list[int]:
    """--dims 1024,256 -> [1024, 256]; anything but whole numbers >= 1 is a usage error."""
    if not value:
        return []
    try:
        dims = [int(d) for d in value.split(",") if d.strip()]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise click.BadParameter(
            f"{value!r}: give widths as whole numbers >= 1, e.g. 1024,256", param_hint="--dims"
        )
    return dims


def _submit(out: Path, indices: list[int], per_job: int, sbatch_values, max_parallel) -> None:
    from sfr_ds.eval.slurm import submit_tasks

    with _clean_errors():
        submit_tasks(out, indices, per_job, sbatch_values, max_parallel, echo=click.echo)


def _evaluate(out: Path, indices: list[int], progress: bool) -> None:
    from sfr_ds.eval.suite import evaluate

    with _clean_errors():
        failed = evaluate(out, indices, progress)
    click.echo((out / "summary.md").read_text())
    click.echo(f"results: {out}")
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)} (see {out}/status/)")


@command.command(hidden=True)
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--element", type=click.IntRange(min=0), required=True)
def worker(out, element):
    """One Slurm array element: the tasks of manifest element N."""
    _require_extra("mteb")
    from sfr_ds.eval.slurm import run_element

    with _clean_errors():
        failed = run_element(Path(out), element)
    sys.exit(1 if failed else 0)


@command.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
def status(out):
    """Each task's state: done (score), pending, running, failed (why, and the log), not run."""
    from sfr_ds.eval.slurm import status_table, task_states

    with _clean_errors():
        click.echo(status_table(task_states(Path(out))))


@command.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--wait", is_flag=True, help="Wait until no task is pending or running.")
@click.option(
    "--poll", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds between checks."
)
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop waiting after this many seconds.")
def collect(out, wait, poll, timeout):
    """Aggregate finished tasks into summary.md/summary.json; name the ones that are not done."""
    from sfr_ds.eval.slurm import collect as collect_folder

    with _clean_errors():
        text, all_done = collect_folder(Path(out).resolve(), wait, poll, timeout)
    click.echo(text)
    if not all_done:
        sys.exit(1)


@command.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--task", "names", multiple=True, help="Task to re-submit (default: every failed one).")
@click.option("--sbatch", "sbatch_values", multiple=True, help="Extra sbatch options.")
def resubmit(out, names, sbatch_values):
    """Re-submit failed tasks, each alone in its own array element."""
    from sfr_ds.eval.slurm import resubmit as resubmit_tasks

    with _clean_errors():
        click.echo(resubmit_tasks(Path(out).resolve(), list(names) or None, sbatch_values))


@command.command()
@click.argument("evals", nargs=-1, required=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Also write the table here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file (never an input).")
def compare(evals, output, overwrite):
    """Models side by side (evaluation folders or model paths), with deltas against the first."""
    from sfr_ds.eval.runner import find_eval
    from sfr_ds.eval.suite import check_table_output, labels, read_scores, width_table
    from sfr_ds.eval.suite import compare as compare_table
    from sfr_ds.io import atomic_write

    with _clean_errors():
        folders = [find_eval(e) for e in evals]
        if output:
            check_table_output(Path(output), list(evals), folders, overwrite)
        scores = [read_scores(folder) for folder in folders]
        text = compare_table(scores)
        if narrower := width_table(folders, labels(scores)):
            text += "\n## By embedding width (Matryoshka)\n\n" + narrower + "\n"
    if output:
        atomic_write(output, text)
    click.echo(text)


@command.command()
@click.argument("model_a")
@click.argument("model_b")
@click.option(
    "--task", "task_spec", required=True, help="A local retrieval task, e.g. retrieval:DATA/scifact."
)
@click.option("--output-dir", type=click.Path(file_okay=False), required=True)
@click.option(
    "--overwrite", is_flag=True, help="Replace lengths.csv and lengths.png already in --output-dir."
)
@_model_options
def lengths(model_a, model_b, task_spec, output_dir, overwrite, **model_options):
    """rank(gold | A) - rank(gold | B) against query and document length: PNG and CSV.

    Model options apply to both models; each model's kind decides what is left unset.
    """
    _require_extra("mteb", "matplotlib")
    from sfr_ds.eval.length_analysis import analyse

    with _clean_errors():
        specs = [_spec(m, model_options) for m in (model_a, model_b)]
        csv_path, png_path = analyse(
            *specs, task_spec, Path(output_dir), model_options["cache_dir"], overwrite=overwrite
        )
    click.echo(f"wrote {png_path} and {csv_path}")
