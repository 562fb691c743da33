"""Step s+1's host-side inputs are made on a worker thread while step s runs on the device.

Building a global batch's texts, tokenizing this rank's share and its candidate mask is host work
that a GPU would otherwise spend idle between two steps. Most of it is the tokenizer's Rust code,
which releases the GIL, so the launching thread keeps most of its rate beside it (the figures:
``benchmarks/host_inputs.py``, docs/benchmarks.md).
``make`` must be a pure function of the step that touches neither the device nor torch's RNG
(the GradCache replay relies on that RNG), so prefetching cannot change what a step computes. A
CUDA call there (even pinning memory) would also run on the thread's current device, GPU 0, not
the rank's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def prefetched(make: Callable[[int], T], steps: range) -> Iterator[tuple[int, T, float]]:
    """``(step, make(step), seconds the caller waited for it)`` for each step, in order.

    ``make(step + 1)`` starts when ``step`` is handed out. An error raised by ``make(s)`` surfaces
    when the caller asks for step ``s``, not earlier; a caller that stops early leaves at most one
    call running, which is waited for when the generator is closed.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sfr-ds-prefetch") as pool:
        pending = pool.submit(make, steps[0]) if len(steps) else None
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            item = pending.result()
            waited = time.perf_counter() - t0
            pending = pool.submit(make, steps[i + 1]) if i + 1 < len(steps) else None
            yield step, item, waited
