"""Stages (mine -> train -> eval ...) and the two ways to run them: here, or as dependent Slurm jobs.

``sfr-ds demo``, ``ablate`` and ``rounds`` only plan their stages; this module runs them. A stage
names its output and knows when that output is complete, so both runners skip what is finished:
running the same command again after any interruption continues where it stopped.

A stage is the ordinary ``sfr-ds`` command a user would type (``cli``), run in a child process and
shown as it runs, or a short step done in this process. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import slurm
from .config import PROJECT_ROOT
from .io import atomic_write_json
from .run_dir import RunDir


def cli(*args: str | os.PathLike | int) -> list[str]:
    """``python -m sfr_ds.cli ARGS`` with this interpreter, so a stage runs in the same environment."""
    return [sys.executable, "-m", "sfr_ds.cli", *map(str, args)]


# ----------------------------------------------------------------------------- stages


@dataclass
class Job:
    """How the Slurm runner submits a stage."""

    key: str  # the stage's entry in the state file, which keeps its job id
    name: str  # --job-name
    log: Path  # --output (%j: the job id)
    options: list[str] = field(default_factory=list)  # resources
    script: list[str] | None = None  # a batch script and its arguments; default: --wrap "srun COMMAND"


@dataclass
class Stage:
    name: str
    output: Path  # what the stage leaves behind (shown to the user)
    done: Callable[[], bool]  # is that output complete
    command: list[str] | None = None  # run in a child process ...
    call: Callable[[], None] | None = None  # ... or here
    job: Job | None = None  # set for stages that run on Slurm


def written(path: Path) -> Callable[[], bool]:
    """A file stage's check: its file is written atomically (or last), so existing means complete."""
    return Path(path).exists


def trained(run: Path) -> Callable[[], bool]:
    """A training stage's check: the run wrote its final adapter (the last thing it writes)."""
    return RunDir(run).finished


def eval_done(folder: Path, dims: Sequence[int] = ()) -> bool:
    """Every task of the evaluation folder has its result (its summary names none missing), at
    every width of ``dims`` narrower than the model's too."""
    summary, settings = Path(folder) / "summary.json", Path(folder) / "model_settings.json"
    if not summary.exists() or json.loads(summary.read_text())["missing"]:
        return False
    if not dims:
        return True
    width = json.loads(settings.read_text())["embedding_dim"] if settings.exists() else None
    scored = set(json.loads(summary.read_text()).get("dims", {}))
    return all(str(d) in scored for d in dims if width is None or d < width)


def mine_stage(
    name: str, records: Path, out: Path, teacher: str, *options: str | int, corpus: str = "from-records"
) -> Stage:
    """``sfr-ds mine`` of ``records`` into ``out`` (written atomically)."""
    command = cli("mine", records, "--corpus", corpus, "--teacher", teacher, *options, "--out", out)
    return Stage(name, Path(out), written(out), command)


def train_stage(name: str, config: str, run: Path, overrides: Sequence[str], nproc: int) -> Stage:
    """``sfr-ds train`` into ``run``; --resume: an interrupted run continues from its checkpoint."""
    command = cli("train", config, *overrides, "--output-dir", run, "--resume", "--nproc-per-node", nproc)
    return Stage(name, Path(run), trained(run), command)


def eval_stage(name: str, model: str | Path, folder: Path, *options: str, dims: Sequence[int] = ()) -> Stage:
    """``sfr-ds eval run`` of ``model`` into ``folder`` (an interrupted one skips its scored tasks),
    also at the first ``dims`` dimensions when given."""
    widths = ["--dims", ",".join(map(str, dims))] if dims else []
    command = cli("eval", "run", model, "--output-dir", folder, *options, *widths)
    return Stage(name, Path(folder), lambda: eval_done(folder, dims), command)


# ----------------------------------------------------------------------------- here


def run_local(stages: Sequence[Stage], what: str, env: Mapping[str, str] | None = None) -> None:
    """Each stage in order, skipping finished ones; a failing stage stops with how to continue."""
    start = time.time()
    for n, stage in enumerate(stages, 1):
        head = f"[{what} {n}/{len(stages)} {time.time() - start:5.0f}s] {stage.name}"
        if stage.done():
            print(f"{head}: done already ({stage.output})", flush=True)
            continue
        print(f"{head} -> {stage.output}", flush=True)
        _run_here(stage, what, env)


def _run_here(stage: Stage, what: str, env: Mapping[str, str] | None) -> None:
    if stage.call:
        stage.call()
        return
    print("  $ " + shlex.join(stage.command), flush=True)
    if subprocess.call(stage.command, cwd=PROJECT_ROOT, env=None if env is None else dict(env)) != 0:
        raise RuntimeError(
            f"{what} stage '{stage.name}' failed; fix the cause and run the same "
            "command again to continue from this stage"
        )


# ----------------------------------------------------------------------------- on Slurm


def submit(stages: Sequence[Stage], state_file: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """Submit every incomplete stage whose job is not still queued or running; returns one line per
    stage. Each job waits for the stage before it (``afterok``); ``--kill-on-invalid-dep=yes`` makes
    a failed stage cancel its dependants instead of leaving them pending forever. Job ids are kept
    in ``state_file`` at once, so a later call reuses live jobs and submits only what is missing."""
    state = _read_state(state_file)
    report, previous = [], None
    for stage in stages:
        key = _job(stage).key
        if stage.done():
            report.append(f"{stage.name}: complete, skipped")
            previous = None
            continue
        job = state.get(key)
        if job and (now := slurm.job_state(job, env=env)) in slurm.ACTIVE:
            report.append(f"{stage.name}: job {job} still {now.lower()}")
            previous = job
            continue
        previous = state[key] = _sbatch(stage, previous, env)
        atomic_write_json(state_file, state)
        report.append(f"{stage.name}: submitted job {previous}")
    return report


def status(stages: Sequence[Stage], state_file: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """One line per stage: complete, its job's state, or that its job ended without its output."""
    state = _read_state(state_file)
    return [f"{stage.name}: {_state_of(stage, state.get(_job(stage).key), env)}" for stage in stages]


def _state_of(stage: Stage, job: str | None, env: Mapping[str, str] | None) -> str:
    if stage.done():
        return "complete"
    if not job:
        return "not submitted"
    if (now := slurm.job_state(job, env=env)) in slurm.ACTIVE:
        return f"job {job} {now.lower()}"
    return f"job {job} ended without its output: failed or cancelled (see {_job(stage).log.parent})"


def _job(stage: Stage) -> Job:
    if stage.job is None:
        raise ValueError(f"stage '{stage.name}' has no Slurm job settings")
    return stage.job


def _sbatch(stage: Stage, after: str | None, env: Mapping[str, str] | None) -> str:
    job = _job(stage)
    job.log.parent.mkdir(parents=True, exist_ok=True)
    args = [f"--job-name={job.name}", f"--output={job.log}", *job.options]
    if after:
        args += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
    args += job.script or ["--wrap", "srun " + shlex.join(stage.command)]
    return slurm.sbatch(args, env=env, cwd=str(PROJECT_ROOT))


def _read_state(path: Path) -> dict[str, str]:
    """Stage key -> its latest job id."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}
