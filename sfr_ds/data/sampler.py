"""Which records form each global batch: a pure function of (seed, epoch, step).

Nothing here keeps state between steps, so a resumed run only needs the step number to see exactly
the batches an uninterrupted run would have seen. With task-homogeneous batching each global batch
comes from one dataset; its order across datasets is a shuffle of all full batches, which draws
datasets in proportion to their size (scaled by optional weights). Tails shorter than a full global
batch are dropped, never trained as a small batch.

With ``shards`` > 1 (``data.homogeneous_scope: rank``) the homogeneous unit is one rank's share
instead: each global batch is ``shards`` consecutive pieces of that shuffle, each piece from one
dataset, so ranks may train on different tasks in one step, as sentence-transformers' multi-dataset
sampler does under DDP. The other ranks' documents a query is scored against then mostly come from
other tasks: easier negatives than the seed's whole-batch homogeneity gives.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


def _key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


@dataclass(frozen=True)
class GlobalBatch:
    step: int
    epoch: int
    dataset: str | None  # None for a mixed batch
    indices: np.ndarray  # [global_batch_size] record indices


class BatchPlan:
    """Global batches over records grouped by dataset.

    ``groups`` maps a dataset name to the indices of its records (in any fixed order).
    """

    def __init__(
        self,
        groups: dict[str, list[int]],
        global_batch_size: int,
        *,
        homogeneous: bool,
        seed: int,
        weights: dict[str, float] | None = None,
        shards: int = 1,
    ):
        if global_batch_size % shards:
            raise ValueError(f"global batch {global_batch_size} does not split into {shards} equal pieces")
        if shards > 1 and not homogeneous:
            raise ValueError("data.homogeneous_scope=rank needs data.homogeneous=true")
        self.shards = shards
        self.groups = {k: np.asarray(v, dtype=np.int64) for k, v in sorted(groups.items())}
        self.global_batch_size = global_batch_size
        self.homogeneous = homogeneous
        self.seed = seed
        self.weights = dict(weights or {})
        unknown = set(self.weights) - set(self.groups)
        if unknown:
            raise ValueError(f"data.dataset_weights names datasets not in the data: {sorted(unknown)}")
        if self.weights and not homogeneous:
            raise ValueError("data.dataset_weights needs data.homogeneous=true")
        piece = global_batch_size // shards  # the homogeneous unit
        self.batches_per_dataset = {  # pieces per dataset and epoch
            name: int(self.weights.get(name, 1.0) * (len(idx) // piece)) for name, idx in self.groups.items()
        }
        total = sum(len(v) for v in self.groups.values())
        self.steps_per_epoch = (
            sum(self.batches_per_dataset.values()) // shards if homogeneous else total // global_batch_size
        )
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"no full global batch of {global_batch_size} queries can be formed "
                f"(datasets: { {k: len(v) for k, v in self.groups.items()} })"
            )

    def never_drawn(self) -> dict[str, int]:
        """Datasets too small for one homogeneous batch (a rank's share under ``shards``): name -> count."""
        if not self.homogeneous:
            return {}
        return {k: len(v) for k, v in self.groups.items() if self.batches_per_dataset[k] == 0}

    @lru_cache(maxsize=2)  # noqa: B019 (one plan per run, alive as long as the run)
    def _epoch(self, epoch: int) -> list[tuple[str | None, np.ndarray]]:
        G = self.global_batch_size
        if not self.homogeneous:
            rng = np.random.default_rng([self.seed, epoch])
            everything = np.concatenate(list(self.groups.values()))
            perm = everything[rng.permutation(len(everything))]
            return [(None, perm[i * G : (i + 1) * G]) for i in range(self.steps_per_epoch)]
        G //= self.shards
        batches = []
        for name, idx in self.groups.items():
            rng = np.random.default_rng([self.seed, epoch, _key(name)])
            want = self.batches_per_dataset[name]
            per_pass = len(idx) // G
            order = []
            while len(order) < want:  # weights > 1 take further passes over the dataset
                perm = idx[rng.permutation(len(idx))]
                order += [perm[i * G : (i + 1) * G] for i in range(per_pass)]
            batches += [(name, b) for b in order[:want]]
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.shards == 1:
            return batches
        steps = []
        for s in range(self.steps_per_epoch):  # a remainder of fewer than ``shards`` pieces is dropped
            pieces = batches[s * self.shards : (s + 1) * self.shards]
            names = {name for name, _ in pieces}
            steps.append((names.pop() if len(names) == 1 else None, np.concatenate([b for _, b in pieces])))
        return steps

    def batch(self, step: int) -> GlobalBatch:
        epoch, pos = divmod(step, self.steps_per_epoch)
        name, idx = self._epoch(epoch)[pos]
        return GlobalBatch(step, epoch, name, idx)
