"""``sfr-ds eval``: MTEB and local evaluation, here or as a Slurm job array, and result tables.

``sfr-ds eval MODEL --tasks ...`` is short for ``sfr-ds eval run MODEL --tasks ...``. Only
``run`` (without --slurm), ``worker`` and ``lengths`` load a model; the rest is light enough for
a login node.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click


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


def _split_tasks(values: tuple[str, ...]) -> list[str]:
    """Comma-separated, but not inside parentheses: benchmark:MTEB(eng, v2) stays whole."""
    return [s.strip() for v in values for s in re.split(r",(?![^()]*\))", v) if s.strip()]


def _default_out(source: str) -> Path:
    from sfr_ds.eval.models import ModelSpec, kind, label

    path = Path(source)
    if path.is_dir():
        return (path.parent if path.name == "final" and kind(source) == "run" else path) / "eval"
    return Path("eval") / label(ModelSpec(source))


def _eval_dir(arg: str) -> Path:
    """An evaluation folder given directly, or the default one of a model path."""
    from sfr_ds.eval.runner import MANIFEST

    for candidate in (Path(arg), _default_out(arg)):
        if (candidate / MANIFEST).exists():
            return candidate
    raise click.ClickException(
        f"{arg}: no evaluation found (neither {arg}/{MANIFEST} nor {_default_out(arg)}/{MANIFEST})"
    )


def _model_options(f):
    options = [
        click.option(
            "--instructions/--no-instruction",
            default=None,
            help="Instructions on queries and symmetric tasks. Default by model kind: "
            "on for sfr-ds runs and decoders, off for BERT-like encoders.",
        ),
        click.option(
            "--pooling",
            type=click.Choice(["last", "mean", "cls"]),
            default=None,
            help="HF models only (default: sentence-transformers config, else mean for "
            "encoders and last for decoders).",
        ),
        click.option(
            "--query-max-len", type=int, default=None, help="Default 512 (or the model's max_seq_length)."
        ),
        click.option(
            "--doc-max-len", type=int, default=None, help="Default 512 (or the model's max_seq_length)."
        ),
        click.option(
            "--dtype",
            type=click.Choice(["bf16", "fp32"]),
            default=None,
            help="Default bf16 on GPU, fp32 on CPU.",
        ),
        click.option("--batch-size", type=int, default=32, show_default=True),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Embedding cache root (default $SFR_DS_CACHE/eval-embeddings).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _spec(model, instructions, pooling, query_max_len, doc_max_len, dtype, batch_size):
    from sfr_ds.eval.models import ModelSpec

    return ModelSpec(model, pooling, instructions, query_max_len, doc_max_len, dtype, batch_size).normalized()


@command.command()
@click.argument("model")
@click.option(
    "--tasks",
    "task_values",
    multiple=True,
    help="MTEB task names, benchmark:NAME, or KIND:PATH[?key=value] local tasks "
    "(kinds: retrieval, sts, classification, clustering, reranking); comma-separated or repeated.",
)
@click.option("--suite", default=None, help="A named task suite (dev: the seed's dev report on local data).")
@click.option(
    "--data-root",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Data folder of a local suite (default $SFR_DS_DATA).",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Default: RUN/eval for a local model folder, else ./eval/NAME.",
)
@_model_options
@click.option("--slurm", is_flag=True, help="Submit a Slurm job array and return at once.")
@click.option("--tasks-per-job", type=int, default=1, show_default=True, help="Tasks per array element.")
@click.option(
    "--sbatch",
    "sbatch_values",
    multiple=True,
    help='Extra sbatch options, e.g. --sbatch "--partition=gpu --time=4:00:00".',
)
@click.option("--max-parallel", type=int, default=None, help="At most N array elements at once.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def run(
    model,
    task_values,
    suite,
    data_root,
    output_dir,
    instructions,
    pooling,
    query_max_len,
    doc_max_len,
    dtype,
    batch_size,
    cache_dir,
    slurm,
    tasks_per_job,
    sbatch_values,
    max_parallel,
    progress,
):
    """Evaluate MODEL (a run directory, an adapter folder, a merged or any HF model, builtin:NAME)."""
    from sfr_ds.eval.runner import prepare, run_tasks
    from sfr_ds.eval.suite import suite_specs, write_summary
    from sfr_ds.eval.tasks import TaskSpecError, describe

    pairs = [(None, s) for s in _split_tasks(task_values)]
    try:
        if suite:
            pairs += suite_specs(suite, data_root)
        if not pairs:
            raise click.UsageError("name tasks with --tasks and/or --suite")
        entries = [e for group, spec in pairs for e in describe(spec, group)]
    except (TaskSpecError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    spec = _spec(model, instructions, pooling, query_max_len, doc_max_len, dtype, batch_size)
    out = Path(output_dir or _default_out(spec.source)).resolve()
    try:
        manifest = prepare(out, spec, entries, cache_dir)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    names = {e.name for e in entries}
    indices = [i for i, t in enumerate(manifest.tasks) if t.name in names]
    if slurm:
        _submit(out, indices, tasks_per_job, sbatch_values, max_parallel)
        return
    failed = run_tasks(out, indices, progress=progress)
    write_summary(out)
    click.echo((out / "summary.md").read_text())
    click.echo(f"results: {out}")
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)} (see {out}/status/)")


def _submit(out: Path, indices: list[int], per_job: int, sbatch_values, max_parallel) -> None:
    """Submit the given tasks, less those done or already pending/running in an earlier array."""
    from sfr_ds.eval.slurm import SlurmError, chunk, sbatch_args, submit, task_states

    try:
        states = task_states(out)
        todo = [i for i in indices if states[i].state in ("not run", "failed")]
        for i in sorted(set(indices) - set(todo)):
            click.echo(f"{states[i].name}: {states[i].state}, not submitted again")
        indices = todo
        if not indices:
            click.echo(f"nothing to submit: sfr-ds eval collect {out}")
            return
        job = submit(out, chunk(indices, per_job), sbatch_args(sbatch_values), max_parallel)
    except SlurmError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"submitted job {job}: {len(indices)} task(s) in {-(-len(indices) // per_job)} array element(s)"
    )
    click.echo(f"follow with: sfr-ds eval status {out}\nthen:        sfr-ds eval collect {out}")


@command.command(hidden=True)
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--element", type=int, required=True)
def worker(out, element):
    """One Slurm array element: the tasks of manifest element N."""
    import os

    from sfr_ds.eval.runner import Manifest, run_tasks

    out = Path(out)
    indices = Manifest.load(out).elements[element]
    job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', element)}"
    failed = run_tasks(out, indices, job=job, progress=False)
    sys.exit(1 if failed else 0)


@command.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
def status(out):
    """Each task's state: done (score), pending, running, failed (why, and the log), not run."""
    from sfr_ds.eval.slurm import status_table, task_states

    click.echo(status_table(task_states(Path(out))))


@command.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--wait", is_flag=True, help="Wait until no task is pending or running.")
@click.option("--poll", type=float, default=10.0, show_default=True, help="Seconds between checks.")
@click.option("--timeout", type=float, default=None, help="Stop waiting after this many seconds.")
def collect(out, wait, poll, timeout):
    """Aggregate finished tasks into summary.md/summary.json; name the ones that are not done."""
    from sfr_ds.eval import slurm
    from sfr_ds.eval.suite import write_summary

    out = Path(out).resolve()
    states = slurm.wait(out, poll, timeout) if wait else slurm.task_states(out)
    write_summary(out)
    click.echo((out / "summary.md").read_text())
    unfinished = [s for s in states if s.state != "done"]
    if unfinished:
        click.echo(slurm.status_table(unfinished))
        failed = [s.name for s in unfinished if s.state in ("failed", "not run")]
        if failed:
            click.echo(
                f"re-submit alone: sfr-ds eval resubmit {out} " + " ".join(f"--task {n}" for n in failed)
            )
        sys.exit(1)


@command.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--task", "names", multiple=True, help="Task to re-submit (default: every failed one).")
@click.option("--sbatch", "sbatch_values", multiple=True, help="Extra sbatch options.")
def resubmit(out, names, sbatch_values):
    """Re-submit failed tasks, each alone in its own array element."""
    from sfr_ds.eval.slurm import SlurmError, resubmit_groups, sbatch_args, submit

    out = Path(out).resolve()
    try:
        groups = resubmit_groups(out, list(names) or None)
        if not groups:
            click.echo("nothing to re-submit: no failed task")
            return
        job = submit(out, groups, sbatch_args(sbatch_values))
    except (SlurmError, KeyError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"submitted job {job}: {len(groups)} task(s), one per array element")


@command.command()
@click.argument("evals", nargs=-1, required=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Also write the table here.")
def compare(evals, output):
    """Models side by side (evaluation folders or model paths), with deltas against the first."""
    from sfr_ds.eval.suite import compare as compare_table
    from sfr_ds.eval.suite import read_scores

    text = compare_table([read_scores(_eval_dir(e)) for e in evals])
    if output:
        Path(output).write_text(text)
    click.echo(text)


@command.command()
@click.argument("model_a")
@click.argument("model_b")
@click.option(
    "--task", "task_spec", required=True, help="A local retrieval task, e.g. retrieval:DATA/scifact."
)
@click.option("--output-dir", type=click.Path(file_okay=False), required=True)
@_model_options
def lengths(
    model_a,
    model_b,
    task_spec,
    output_dir,
    instructions,
    pooling,
    query_max_len,
    doc_max_len,
    dtype,
    batch_size,
    cache_dir,
):
    """rank(gold | A) - rank(gold | B) against query and document length: PNG and CSV.

    Model options apply to both models; each model's kind decides what is left unset.
    """
    from sfr_ds.eval.length_analysis import analyse
    from sfr_ds.eval.tasks import TaskSpecError

    specs = [
        _spec(m, instructions, pooling, query_max_len, doc_max_len, dtype, batch_size)
        for m in (model_a, model_b)
    ]
    try:
        csv_path, png_path = analyse(*specs, task_spec, Path(output_dir), cache_dir)
    except (TaskSpecError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {png_path} and {csv_path}")
