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
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .runner import Manifest, is_done, read_status, write_status

SCRIPT = """#!/bin/bash
#SBATCH --job-name=sfr-eval-{label}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --output={logs}/%A_%a.out
# Written by `sfr-ds eval --slurm`. Element N evaluates the tasks of manifest element N
# ({out}/eval.json); options given to sbatch on its command line override these lines.
exec {python} -m sfr_ds.cli eval worker {out} --element "$SLURM_ARRAY_TASK_ID"
"""


class SlurmError(RuntimeError):
    pass


def _slurm(*cmd: str) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} not found: is this a Slurm login node?") from None
    if p.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} failed: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def write_script(out: Path, manifest: Manifest) -> Path:
    path = out / "slurm" / "eval.sbatch"
    logs = out / "slurm" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in manifest.label)
    path.write_text(SCRIPT.format(label=label, logs=logs, out=out, python=sys.executable))
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
    manifest.save(out)
    array = ",".join(str(first + i) for i in range(len(groups)))
    if max_parallel:
        array += f"%{max_parallel}"
    output = _slurm("sbatch", "--parsable", f"--array={array}", *sbatch_args, str(script))
    job_id = output.strip().split(";")[0]
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


# ----------------------------------------------------------------------------- state


@dataclass
class TaskState:
    name: str
    state: str  # done | pending | running | failed | not run
    job: str | None = None
    detail: str = ""


def _queued(jobs: set[str]) -> dict[str, str]:
    """Array element id (JOB_N) -> squeue state, for the given jobs that Slurm still lists."""
    queued: dict[str, str] = {}
    for job in sorted(jobs):
        try:
            lines = _slurm("squeue", "-h", "-r", "-j", job, "-o", "%i %T").splitlines()
        except SlurmError:  # an id Slurm has forgotten: its elements have all ended
            continue
        queued.update(line.split() for line in lines if line.strip())
    return queued


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
    queued = _queued(_submitted_jobs(out))
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
        return TaskState(name, "failed", job, status["error"].splitlines()[0] + log)
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


def resubmit_groups(out: Path, names: list[str] | None) -> list[list[int]]:
    """One element per task: the named ones, else every failed or never-run task."""
    manifest = Manifest.load(out)
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
    return [arg for value in values for arg in shlex.split(value)]
