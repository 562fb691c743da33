"""The Slurm client: every ``sbatch`` and ``squeue`` call of sfr-ds goes through here.

Plain commands rather than a Python binding: submitting needs only a command line, the job
scripts stay readable and re-submittable by hand, and clusters without accounting (no ``sacct``)
work the same. Nothing here imports torch.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping

# squeue states of a job that has not ended
ACTIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"})


class SlurmError(RuntimeError):
    """A Slurm command that is missing or failed; the message has its own output."""


def slurm(*cmd: str, env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """Run one Slurm command; its stdout, or SlurmError naming the command and its error."""
    try:
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=60, env=None if env is None else dict(env), cwd=cwd
        )
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} not found: is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{cmd[0]} did not answer within 60 s: is slurmctld up?") from None
    if p.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} failed: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def sbatch(args: Iterable[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """Submit; returns the job id."""
    return slurm("sbatch", "--parsable", *args, env=env, cwd=cwd).strip().split(";")[0]


def job_state(job: str, env: Mapping[str, str] | None = None) -> str:
    """squeue's state of a job (its first line for an array), or ENDED once squeue forgets it."""
    try:
        out = slurm("squeue", "-h", "-j", job, "-o", "%T", env=env)
    except SlurmError:  # an id Slurm no longer knows has ended
        return "ENDED"
    return (out.split() or ["ENDED"])[0]


def array_states(jobs: Iterable[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Array element id (JOB_N) -> squeue state, for the elements of ``jobs`` Slurm still lists."""
    queued: dict[str, str] = {}
    for job in sorted(set(jobs)):
        try:
            lines = slurm("squeue", "-h", "-r", "-j", job, "-o", "%i %T", env=env).splitlines()
        except SlurmError:  # an id Slurm has forgotten: its elements have all ended
            continue
        queued.update(line.split() for line in lines if line.strip())
    return queued
