"""Every use of ``torch.distributed`` in sfr-ds lives here; all of it also works with one process.

Ranks are found from the launcher's environment: torchrun / the deepspeed launcher (RANK,
WORLD_SIZE, LOCAL_RANK), Slurm's ``srun`` (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), or nothing
(one process on a free local port).
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_slurm_host() -> str:
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "127.0.0.1"


def launcher_env() -> dict[str, str]:
    """The RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* variables torch needs, from whichever launcher ran us."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        out = {k: env[k] for k in ("RANK", "WORLD_SIZE")}
        out["LOCAL_RANK"] = env.get("LOCAL_RANK", "0")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        out = {
            "RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": env["SLURM_NTASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        }
        if "MASTER_ADDR" not in env:
            out["MASTER_ADDR"] = _first_slurm_host()
        if "MASTER_PORT" not in env:
            # Every rank must agree on the port without talking: derive it from the job id.
            out["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    else:
        out = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    if "MASTER_ADDR" not in env and "MASTER_ADDR" not in out:
        out["MASTER_ADDR"] = "127.0.0.1"
    if "MASTER_PORT" not in env and "MASTER_PORT" not in out:
        out["MASTER_PORT"] = str(_free_port())
    return out


def torchrun(n: int, *target: str, port: str | None = None) -> list[str]:
    """The command line that starts ``target`` (a script and its arguments, or ``-m MODULE ...``)
    under torchrun (``sfr_ds.launch``) with ``n`` ranks on this machine, on ``port`` (default: a
    free one)."""
    port = port or os.environ.get("MASTER_PORT") or str(_free_port())
    launcher = ["-m", "sfr_ds.launch", f"--nproc-per-node={n}", "--nnodes=1"]
    return [sys.executable, *launcher, "--master-addr=127.0.0.1", f"--master-port={port}", *target]


def spawn_local(n: int, command: str, argv: list[str]) -> int:
    """Run ``sfr-ds COMMAND ARGV`` under torchrun with ``n`` ranks on this machine; its exit code.
    One thread per rank unless OMP_NUM_THREADS says otherwise (N ranks share the cores)."""
    cmd = torchrun(n, "-m", "sfr_ds.cli", command, *argv)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(cmd, env=env)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this rank when its launcher dies, so no orphan rank trains on alone."""
    if sys.platform.startswith("linux") and "RANK" in os.environ:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the launcher died before we asked
            os._exit(1)


def setup(timeout_s: int = 1800) -> DistInfo:
    """Initialise the default process group once (gloo on CPU, nccl on CUDA)."""
    if not dist.is_initialized():
        die_with_parent()
        os.environ.update(launcher_env())
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        local_rank = int(os.environ["LOCAL_RANK"])
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    return info()


def info() -> DistInfo:
    if not dist.is_initialized():
        return DistInfo(0, 1, 0)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for our slice.

    Rank r's embeddings are used by the losses of all ranks, so their gradient is the sum of those
    contributions; DeepSpeed then averages parameter gradients over ranks, which turns the sum of
    per-rank mean losses into the global mean. No 1/W or W factor appears anywhere.
    """

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        # Reduce-scatter: each rank receives only the sum for its own slice, half the traffic of
        # an all-reduce of the whole gathered gradient. gloo has only the list form.
        grad = grad.contiguous()
        own = torch.empty_like(grad[: grad.size(0) // dist.get_world_size()])
        if dist.get_backend() == "gloo":
            dist.reduce_scatter(own, list(grad.chunk(dist.get_world_size(), 0)))
        else:
            dist.reduce_scatter_tensor(own, grad)
        return own


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [n, ...] from all ranks in rank order -> [W*n, ...], differentiably."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, returned as a new tensor (the input is left untouched)."""
    t = t.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl" and not t.is_cuda:  # NCCL reduces device tensors only
            return all_reduce_sum(t.cuda()).to(t.device)
        dist.all_reduce(t)
    return t


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
