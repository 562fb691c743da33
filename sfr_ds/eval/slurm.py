"""Evaluation as a Slurm job array, submitted with ``sbatch`` from a login node.

Why plain ``sbatch`` rather than submitit: the array element only has to run one CLI command
(``sfr-ds eval worker OUT --element N``), so there is nothing to pickle, and the job script stays
readable and re-submittable by hand; submitit's job states come from ``sacct``, which clusters
without accounting lack. State comes from the files each element writes
(``OUT/status/<Task>.json``, mteb's result files) plus ``squeue`` for elements that have not
started or are running. A task whose element died without a word (time limit, OOM, node failure)
shows as failed once squeue no longer lists it. Nothing here imports torch or mteb.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write
from ..slurm import SlurmError, array_states, sbatch  # SlurmError: callers catch it from here too
from .runner import MANIFEST, EvalFolderError, Manifest, is_done, read_status, run_tasks, write_status
from .suite import write_summary

# Every path in it is quoted: shlex.quote where bash reads (the exec line), Slurm's own quoting
# ("...", \" and %%) in the #SBATCH line, which sbatch parses and bash skips as a comment.
SCRIPT = """#!/bin/bash
#SBATCH --job-name=sfr-eval-{label}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --output={log}
# Written by `sfr-ds eval --slurm`: element N evaluates the tasks of element N of the manifest
# {manifest}
# Options given to sbatch on its command line override these lines.
exec {python} -m sfr_ds.cli eval worker {out} --element "$SLURM_ARRAY_TASK_ID"
"""


def check_script_path(path: Path, what: str = "--output-dir") -> None:
    """A path a job script can hold: no line break or other control character (a comment line
    would end there and the rest run as a command) and no backslash (sbatch's own escape)."""
    if any(ord(c) < 32 or c in "\x7f\\" for c in str(path)):
        raise ValueError(
            f"{str(path)!r}: a Slurm job script cannot name a path holding a control character "
            f"or a backslash; choose another {what}"
        )


def _sbatch_quoted(folder: Path, pattern: str) -> str:
    """``folder/pattern`` as one #SBATCH value: in quotes, its quotes escaped, its % doubled (a
    literal % would be read as a file name pattern such as %j)."""
    return '"' + str(folder).replace("%", "%%").replace('"', '\\"') + "/" + pattern + '"'


def write_script(out: Path, manifest: Manifest) -> Path:
    check_script_path(out)
    check_script_path(Path(sys.executable), "Python interpreter (install sfr-ds elsewhere)")
    logs = out / "slurm" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in manifest.label)
    text = SCRIPT.format(
        label=label,
        log=_sbatch_quoted(logs, "%A_%a.out"),
        manifest=shlex.quote(str(out / MANIFEST)),
        python=shlex.quote(sys.executable),
        out=shlex.quote(str(out)),
    )
    path = out / "slurm" / "eval.sbatch"
    atomic_write(path, text)
    return path


def submit(
    out: Path, groups: list[list[int]], sbatch_args: list[str] = (), max_parallel: int | None = None
) -> str:
    """Append one array element per group of task indices and submit them; returns the job id."""
    out = out.resolve()
    manifest = Manifest.load(out)
    script = write_script(out, manifest)
    first = len(manifest.elements)
    manifest.elements += groups
    manifest.save(out)  # before sbatch: an element may start before sbatch returns
    array = ",".join(str(first + i) for i in range(len(groups)))
    if max_parallel:
        array += f"%{max_parallel}"
    try:
        job_id = sbatch([f"--array={array}", *sbatch_args, str(script)])
    except SlurmError:  # nothing was submitted: the manifest names no element that will never run
        manifest.elements = manifest.elements[:first]
        manifest.save(out)
        raise
    for i, group in enumerate(groups):
        for index in group:
            write_status(out, manifest.tasks[index].name, "submitted", job=f"{job_id}_{first + i}")
    with open(out / "slurm" / "submissions.jsonl", "a") as f:
        f.write(
            json.dumps(
                {
                    "job_id": job_id,
                    "elements": list(range(first, first + len(groups))),
                    "sbatch_args": list(sbatch_args),
                    "time": time.time(),
                }
            )
            + "\n"
        )
    return job_id


def chunk(indices: list[int], per_job: int) -> list[list[int]]:
    return [indices[i : i + per_job] for i in range(0, len(indices), per_job)]


def submit_tasks(
    out: Path,
    indices: list[int],
    per_job: int,
    sbatch_values: tuple[str, ...] = (),
    max_parallel: int | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Submit the given tasks, less those done or pending/running in an earlier array (each named
    through ``echo``, as is the job and how to follow it)."""
    states = task_states(out)
    todo = [i for i in indices if states[i].state in ("not run", "failed")]
    for i in sorted(set(indices) - set(todo)):
        echo(f"{states[i].name}: {states[i].state}, not submitted again")
    if not todo:
        echo(f"nothing to submit: sfr-ds eval collect {out}")
        return
    job = submit(out, chunk(todo, per_job), sbatch_args(sbatch_values), max_parallel)
    echo(f"submitted job {job}: {len(todo)} task(s) in {-(-len(todo) // per_job)} array element(s)")
    echo(f"follow with: sfr-ds eval status {out}\nthen:        sfr-ds eval collect {out}")


def resubmit(out: Path, names: list[str] | None, sbatch_values: tuple[str, ...] = ()) -> str:
    """Re-submit the named tasks (default: every failed one), each alone in its own array element;
    the line to show."""
    groups = resubmit_groups(out, names)
    if not groups:
        return "nothing to re-submit: no failed task"
    job = submit(out, groups, sbatch_args(sbatch_values))
    return f"submitted job {job}: {len(groups)} task(s), one per array element"


def run_element(out: Path, element: int) -> list[str]:
    """Inside an array element: the tasks of manifest element ``element``; the failed ones' names."""
    elements = Manifest.load(out).elements
    if not 0 <= element < len(elements):
        raise EvalFolderError(f"{out / MANIFEST}: no array element {element} (it has {len(elements)})")
    indices = elements[element]
    job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', element)}"
    return run_tasks(out, indices, job=job, progress=False)


# ----------------------------------------------------------------------------- state


@dataclass
class TaskState:
    name: str
    state: str  # done | pending | running | failed | not run
    job: str | None = None
    detail: str = ""


def _pid_alive(status: dict) -> bool:
    if status.get("host") != socket.gethostname():
        return True  # a local run on another machine: trust its word
    try:
        os.kill(status["pid"], 0)
        return True
    except OSError:
        return False


def _submitted_jobs(out: Path) -> set[str]:
    path = out / "slurm" / "submissions.jsonl"
    return {json.loads(line)["job_id"] for line in path.read_text().splitlines()} if path.exists() else set()


def task_states(out: Path) -> list[TaskState]:
    """squeue first, the status files after: an element that left the queue in between has
    already written its final status, so it is never mistaken for one that died silently."""
    queued = array_states(_submitted_jobs(out))
    manifest = Manifest.load(out)
    return [_state(out, manifest, t.name, read_status(out, t.name), queued) for t in manifest.tasks]


def _state(
    out: Path, manifest: Manifest, name: str, status: dict | None, queued: dict[str, str]
) -> TaskState:
    if is_done(out, manifest, name):
        return TaskState(
            name,
            "done",
            status and status.get("job"),
            f"{status['score']:.4f}" if status and "score" in status else "",
        )
    if status is None or status["state"] == "done":  # done: for weights since replaced
        return TaskState(name, "not run")
    job = status.get("job")
    log = f" (log: {out / 'slurm' / 'logs' / f'{job}.out'})" if job else ""
    if status["state"] == "failed":
        error = str(status.get("error") or "no error recorded").splitlines() or [""]
        return TaskState(name, "failed", job, error[0] + log)
    if job and job in queued:
        return TaskState(name, "pending" if queued[job] == "PENDING" else "running", job, queued[job])
    if not job and _pid_alive(status):
        return TaskState(name, "running", None, f"local pid {status['pid']}")
    return TaskState(name, "failed", job, "ended without a result" + log)


def status_table(states: list[TaskState]) -> str:
    rows = [("TASK", "STATE", "JOB", "DETAIL")] + [(s.name, s.state, s.job or "-", s.detail) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows)


def wait(out: Path, poll_s: float = 10.0, timeout_s: float | None = None) -> list[TaskState]:
    """Until no task is pending or running (or ``timeout_s`` passes)."""
    end = None if timeout_s is None else time.time() + timeout_s
    while True:
        states = task_states(out)
        if all(s.state not in ("pending", "running") for s in states):
            return states
        if end is not None and time.time() > end:
            return states
        time.sleep(poll_s)


def collect(
    out: Path, block: bool = False, poll_s: float = 10.0, timeout_s: float | None = None
) -> tuple[str, bool]:
    """Write the summary of the finished tasks (after waiting, with ``block``); the text to show
    (the table, then the tasks not done and how to re-submit the failed ones) and whether all are done."""
    states = wait(out, poll_s, timeout_s) if block else task_states(out)
    write_summary(out)
    text = [(out / "summary.md").read_text()]
    unfinished = [s for s in states if s.state != "done"]
    if unfinished:
        text.append(status_table(unfinished))
    if failed := [s.name for s in unfinished if s.state in ("failed", "not run")]:
        text.append(f"re-submit alone: sfr-ds eval resubmit {out} " + " ".join(f"--task {n}" for n in failed))
    return "\n".join(text), not unfinished


def resubmit_groups(out: Path, names: list[str] | None) -> list[list[int]]:
    """One element per task: the named ones, else every failed or never-run task."""
    manifest = Manifest.load(out)
    for name in names or []:
        manifest.index(name)  # an unknown name is an error listing the tasks
    states = {s.name: s for s in task_states(out)}
    if names is None:
        names = [n for n, s in states.items() if s.state in ("failed", "not run")]
    busy = [n for n in names if states[n].state in ("pending", "running")]
    if busy:
        raise SlurmError(
            f"still {', '.join(f'{n} ({states[n].state})' for n in busy)}: scancel first, or wait"
        )
    return [[manifest.index(n)] for n in names]


def sbatch_args(values: tuple[str, ...]) -> list[str]:
    """``--sbatch "--partition=gpu --time=4:00:00"`` (repeatable) as an argument list."""
    args = []
    for value in values:
        try:
            args += shlex.split(value)
        except ValueError as e:  # an unclosed quote
            raise ValueError(f"--sbatch {value!r}: {e}") from None
    return args
