"""The deepspeed module, imported once on first use with the settings a CPU-only machine needs."""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType


@functools.cache
def deepspeed() -> ModuleType:
    import torch

    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed as ds

    if cpu:
        # DeepSpeed JIT-compiles a shared-memory collective op (~30 s) at init on CPU; gloo does
        # the collectives fine without it.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    return ds
