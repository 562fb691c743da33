"""Where a step reads tensor values back into Python: on a GPU each such read makes the host wait
for the device, so the chunk loops of a training step should have none.

``HostReads`` is a dispatch mode that records every op handing a tensor's value to Python
(``.item()``, ``bool()``/``float()`` of a tensor, ``nonzero``, boolean-mask selection, ``equal``,
``unique``) with the innermost frame outside torch that asked for it. It works on CPU, so CI can
check what a GPU run would synchronise on; ``.tolist()`` runs no op and on a CPU-only machine
``.cpu()`` copies nothing, so on a GPU ``torch.cuda.set_sync_debug_mode`` remains the full list.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = {
    torch.ops.aten._local_scalar_dense,
    torch.ops.aten.nonzero,
    torch.ops.aten.is_nonzero,
    torch.ops.aten.masked_select,
    torch.ops.aten.equal,
    torch.ops.aten._unique2,
}
TORCH = str(Path(torch.__file__).parent)


class HostReads(TorchDispatchMode):
    """``with HostReads() as reads: ...`` then ``reads.where``: {(file, line, function): count}."""

    def __init__(self):
        super().__init__()
        self.where: Counter[tuple[str, int, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in READS:
            frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith(TORCH)]
            f = frames[-1] if frames else None
            self.where[(short(f.filename), f.lineno, f.name) if f else ("?", 0, "?")] += 1
        return func(*args, **(kwargs or {}))

    def functions(self) -> set[tuple[str, str]]:
        """{(file name, function)}: where reads happened, lines left out."""
        return {(Path(file).name, name) for file, _, name in self.where}

    def report(self) -> str:
        return "\n".join(
            f"{n:>4} x {file}:{line} ({name})" for (file, line, name), n in sorted(self.where.items())
        )


def short(filename: str) -> str:
    """A path from its package down: sfr_ds/..., deepspeed/..., transformers/..."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "sfr_ds", "tests", "benchmarks"):
        if anchor in parts:
            i = parts.index(anchor)
            return str(Path(*parts[i + 1 if anchor == "site-packages" else i :]))
    return filename
