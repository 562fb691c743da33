"""Training data per step: the plan over the records, and one rank's share of each global step
(tokens, positives, candidate mask), made on the host.

Every rank builds the whole global batch's texts from the pure plan (strings only), so its share
and the mask over every rank's documents need no communication. ``TrainingData.maker`` is a pure
function of the step, which is what lets the training loop make step s+1's inputs during step s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config import ConfigError, TrainConfig
from .arrow_store import open_training_data
from .batch import NegativeDrawer, TextBatch, allowed_mask, build_text_batch
from .load import group_by_dataset, load_training_data
from .records import Record
from .sampler import BatchPlan, GlobalBatch
from .tokens import Tokens, tokenize

if TYPE_CHECKING:
    from ..forward_backward import ChunkPolicy


@dataclass
class TrainingData:
    """The records, the pure plan of which of them form each global step, and the negatives' draw."""

    records: list[Record]
    plan: BatchPlan
    drawer: NegativeDrawer
    total_steps: int

    @classmethod
    def load(cls, cfg: TrainConfig, world: int = 1) -> TrainingData:
        """``world``: the rank count, which only ``data.homogeneous_scope: rank`` plans with."""
        if cfg.data.memory_map:  # converted once per node to Arrow, rows read as steps need them
            data = cfg.data
            records = open_training_data(
                data.train_files, data.max_records_per_dataset, data.cache_dir or None, data.file_formats
            )
        elif cfg.data.file_formats:
            raise ConfigError(["'data.file_formats' needs data.memory_map=true (the Arrow reader maps them)"])
        else:  # every record parsed into this process
            records = load_training_data(cfg.data.train_files, cfg.data.max_records_per_dataset)
        try:
            plan = BatchPlan(
                group_by_dataset(records),
                cfg.data.global_batch_size,
                homogeneous=cfg.data.homogeneous,
                seed=cfg.data.seed,
                weights=cfg.data.dataset_weights,
                shards=world if cfg.data.homogeneous_scope == "rank" else 1,
            )
        except ValueError as e:
            raise ConfigError([str(e)]) from None
        drawer = NegativeDrawer(records, cfg.data.hard_negatives, cfg.data.short_negatives, cfg.data.seed)
        total = plan.steps_per_epoch * cfg.optim.epochs
        if cfg.optim.max_steps is not None:
            total = min(total, cfg.optim.max_steps)
        return cls(records, plan, drawer, total)

    def describe(self) -> list[str]:
        """What the run will see, and the warnings it deserves."""
        groups = ", ".join(f"{k}: {len(v)}" for k, v in self.plan.groups.items())
        lines = [*(self.records.notes() if hasattr(self.records, "notes") else [])]
        lines += [
            f"{len(self.records)} records in {len(self.plan.groups)} datasets ({groups}); "
            f"{self.plan.steps_per_epoch} steps per epoch, {self.total_steps} steps in all"
        ]
        for name, n in self.plan.never_drawn().items():
            lines.append(
                f"WARNING dataset {name!r} has {n} records, fewer than one batch of its own "
                f"({self.plan.global_batch_size // self.plan.shards}): never drawn"
            )
        d = self.drawer
        if d.n_short:
            lines.append(
                f"{d.n_short} records have fewer than {d.k} negatives ({d.n_empty} have none): "
                f"filled by the '{d.policy}' policy"
            )
        return lines

    def maker(
        self, rows: slice, tokenizer, cfg: TrainConfig
    ) -> Callable[[int], tuple[GlobalBatch, StepInputs]]:
        """make(step): the plan's global batch for ``step`` and this rank's inputs, a pure function
        of the step (no device, no torch RNG), so it can run ahead on another thread."""

        def make(step: int) -> tuple[GlobalBatch, StepInputs]:
            gb = self.plan.batch(step)
            batch = build_text_batch(self.records, gb.indices, gb.epoch, self.drawer)
            return gb, step_inputs(batch, rows, tokenizer, cfg)

        return make


@dataclass
class StepInputs:
    """This rank's share of one global step, all on the host."""

    queries: Tokens
    docs: Tokens
    positive: torch.Tensor  # [n] each query's positive among ``docs`` or the gathered documents
    allowed: torch.Tensor  # [n, N] bool: which of those documents each query may score
    gather: bool  # the loss scores every rank's documents (in-batch negatives)

    @property
    def n_tokens(self) -> int:
        return self.queries.n_tokens + self.docs.n_tokens


def rank_rows(cfg: TrainConfig, rank: int, world: int) -> slice:
    """This rank's queries of the global batch; the global batch must split evenly over ranks."""
    n = per_rank_queries(cfg, world)
    return slice(rank * n, (rank + 1) * n)


def per_rank_queries(cfg: TrainConfig, world: int) -> int:
    G = cfg.data.global_batch_size
    if G % world:
        raise ConfigError(
            [f"data.global_batch_size={G} is not divisible by the {world} ranks; use a multiple of {world}"]
        )
    return G // world


def arithmetic(cfg: TrainConfig, world: int, chunks: ChunkPolicy | None) -> str:
    """The batch arithmetic the run prints at start: global and per-rank sizes, and the chunks."""
    G, k = cfg.data.global_batch_size, cfg.data.hard_negatives
    n = per_rank_queries(cfg, world)
    text = (
        f"global batch {G} queries = {n} per rank x {world} ranks; {1 + k} documents per query "
        f"(1 positive + {k} hard negatives) -> {n * (1 + k)} documents per rank, "
        f"{G * (1 + k)} candidates per in-batch query"
    )
    if chunks is not None:
        text += f"; GradCache: {chunks.describe(n, n * (1 + k))}"
    return text


def step_inputs(batch: TextBatch, rows: slice, tokenizer, cfg: TrainConfig) -> StepInputs:
    """This rank's tokens, and what its loss scores, over the (gathered) documents of the global batch."""
    group, eos = batch.group, cfg.model.appends_eos
    queries = tokenize(tokenizer, batch.queries[rows], cfg.data.query_max_len, eos)
    docs = tokenize(tokenizer, batch.docs[rows.start * group : rows.stop * group], cfg.data.doc_max_len, eos)
    allowed = allowed_mask(batch, rows, cfg.loss.mask_duplicates)
    gather = batch.needs_gather()  # labels-only batches need no other rank's documents
    offset = 0 if gather else rows.start * group
    if not gather:
        allowed = allowed[:, offset : offset + len(docs)]
    positive = torch.arange(rows.start, rows.stop) * group - offset
    return StepInputs(queries, docs, positive, allowed, gather)
