"""One training step's forward/backward: plain, or GradCache through the DeepSpeed engine.

GradCache (Gao et al., 2021) makes the loss over a huge batch cost the memory of one chunk:
  1. embed every chunk without grad (nothing stored), remembering each chunk's RNG state -- all
     but the largest chunk, which is embedded with grad in its turn, its graph kept;
  2. run the loss, cross-rank gather included, on the detached embeddings and keep d loss/d emb;
     the loss goes one block of queries at a time, so its logits (queries x gathered documents)
     stay a fixed size however large the batch;
  3. back-propagate the cached gradient through the kept graph, then re-embed each other chunk
     with grad under its RNG state (identical dropout) and back-propagate its cached gradient with
     ``engine.backward``; only the last backward is a gradient-accumulation boundary, so the
     caller takes a single optimizer step (ZeRO-2 still reduces gradients across ranks at every
     backward: every rank must run as many chunks as the others). Keeping one graph saves one
     chunk's second forward (a third of a step whose rank holds one chunk of queries and one of
     documents) for one chunk's activations alive during the loss, which re-embedding needs anyway.
A ``ChunkPolicy`` makes the chunks: runs of ``size`` sequences padded to their longest, or packed:
sequences sorted by length and filled greedily into chunks of at most ``tokens`` real tokens,
each run as one row with attention kept per sequence, so nothing is computed on padding. Either
way the embeddings are put back in the original order before the loss.
The engine is used duck-typed (``engine(...)``, ``.backward``, ``.set_gradient_accumulation_boundary``)
so this module does not import deepspeed. Nothing in a step reads a device value on the host
except the caller's ``gate`` (and, packing on several ranks, one exchange of chunk counts before
any device work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import dist
from .config import GradCacheConfig
from .data.step_inputs import StepInputs
from .data.tokens import Packed, Tokens, to_device, token_budget_chunks
from .loss import RowLoss

# Called with the local loss before any parameter gradient exists; False skips the backward (all
# ranks must agree, so the gate is where the step's one collective happens).
Gate = Callable[[torch.Tensor], bool]
LOSS_BLOCK_LOGITS = 1 << 25  # logits per loss block: 128 MiB in fp32, whatever the batch


def _always(loss: torch.Tensor) -> bool:
    return True


class RngState:
    """CPU and current-CUDA-device generator states, to replay dropout exactly."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


@dataclass
class Chunk:
    batch: Tokens | Packed  # what the engine embeds
    rows: torch.Tensor  # [b] int64: which local queries (or documents) these are, in batch order


@dataclass(frozen=True)
class ChunkPolicy:
    """How GradCache cuts one rank's sequences into chunks: runs of ``size`` sequences padded to
    their longest, or (``tokens`` set: packing) chunks of at most ``tokens`` real tokens."""

    size: int = 32
    tokens: int | None = None

    @classmethod
    def from_config(cls, cfg: GradCacheConfig) -> ChunkPolicy | None:
        """None when GradCache is off: the step runs as one forward and one backward."""
        if not cfg.enabled:
            return None
        return cls(cfg.chunk_size, cfg.chunk_tokens if cfg.packing else None)

    def describe(self, n_queries: int, n_docs: int) -> str:
        if self.tokens is not None:
            return f"packed chunks of <= {self.tokens} real tokens"
        count = len(_runs(n_queries, self.size)) + len(_runs(n_docs, self.size))
        return f"{count} chunks of <= {self.size} sequences per rank"

    def plan(self, queries: Tokens, docs: Tokens) -> tuple[list[Chunk], list[Chunk]]:
        """Query chunks and document chunks.

        Every rank must make as many ``engine.backward`` calls as the others (under ZeRO-2 each one
        reduces gradients across ranks), so where packing leaves ranks with different chunk counts,
        the fullest chunks are halved until every rank has as many as the rank with the most.
        """
        if self.tokens is None:
            return (
                [
                    Chunk(queries.slice(r.start, r.stop), torch.arange(r.start, r.stop))
                    for r in _runs(len(queries), self.size)
                ],
                [
                    Chunk(docs.slice(r.start, r.stop), torch.arange(r.start, r.stop))
                    for r in _runs(len(docs), self.size)
                ],
            )
        q_len, d_len = queries.lengths(), docs.lengths()
        plan = [(True, r) for r in token_budget_chunks(q_len, self.tokens)]
        plan += [(False, r) for r in token_budget_chunks(d_len, self.tokens)]
        target = max(dist.all_gather_object(len(plan)))
        while len(plan) < target:  # ranks hold equally many sequences, so a chunk of 2+ is always there
            tokens = [sum((q_len if is_q else d_len)[i] for i in r) if len(r) > 1 else -1 for is_q, r in plan]
            j = tokens.index(max(tokens))
            is_q, r = plan[j]
            plan[j : j + 1] = [(is_q, r[: len(r) // 2]), (is_q, r[len(r) // 2 :])]
        return (
            [Chunk(queries.pack(r), torch.tensor(r)) for is_q, r in plan if is_q],
            [Chunk(docs.pack(r), torch.tensor(r)) for is_q, r in plan if not is_q],
        )


def _runs(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _in_batch_order(embs: list[torch.Tensor], chunks: list[Chunk]) -> torch.Tensor:
    """Chunk embeddings [b_j, d] -> [n, d] with row i the embedding of sequence i."""
    out = torch.cat(embs)
    order = to_device(torch.cat([c.rows for c in chunks]), out.device)
    return torch.empty_like(out).index_copy_(0, order, out)


def _in_chunk_order(grad: torch.Tensor, chunks: list[Chunk]) -> list[torch.Tensor]:
    """Gradient [n, d] in batch order -> one [b_j, d] block per chunk, rows as the chunk holds them."""
    order = to_device(torch.cat([c.rows for c in chunks]), grad.device)
    return list(grad.index_select(0, order).split([len(c.rows) for c in chunks]))


def loss_and_grads(
    loss: RowLoss, q: torch.Tensor, d: torch.Tensor, *, gather: bool, block_logits: int = LOSS_BLOCK_LOGITS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(local loss, d loss/d q, d loss/d d), one block of query rows at a time.

    The documents are gathered from all ranks once; each block's backward adds its share to the
    gathered documents' gradient, and one backward through the gather (a reduce-scatter) returns
    this rank's part.
    """
    d = d.detach().requires_grad_(True)
    docs = dist.gather_with_grad(d) if gather else d
    candidates = docs.detach().requires_grad_(True)
    q = q.detach()
    q_grad, losses = torch.empty_like(q), []
    step = max(1, block_logits // max(1, len(candidates)))
    for i in range(0, len(q), step):
        rows = slice(i, i + step)
        block = q[rows].detach().requires_grad_(True)
        part = loss(block, candidates, rows)
        part.backward()
        q_grad[rows] = block.grad
        losses.append(part.detach())
    docs.backward(candidates.grad)
    return torch.stack(losses).sum(), q_grad, d.grad


def forward_backward(
    engine,
    inputs: StepInputs,
    loss: RowLoss,
    *,
    chunks: ChunkPolicy | None,
    gate: Gate = _always,
    check_replay: bool = False,
) -> torch.Tensor:
    """One step's gradients on the engine (no optimizer step): GradCache where ``chunks`` is given,
    else one plain forward and backward. Returns this rank's loss."""
    if chunks is None:
        return plain_step(engine, inputs.queries, inputs.docs, loss, gather=inputs.gather, gate=gate)
    return gradcache_step(
        engine,
        inputs.queries,
        inputs.docs,
        loss,
        chunks=chunks,
        gather=inputs.gather,
        gate=gate,
        check_replay=check_replay,
    )


def plain_step(
    engine, queries: Tokens, docs: Tokens, loss: RowLoss, *, gather: bool, gate: Gate = _always
) -> torch.Tensor:
    """Forward the whole local batch with grad, then ``engine.backward``. Returns the local loss."""
    device = engine.device
    q = engine(**vars(queries.to(device)))
    d = engine(**vars(docs.to(device)))
    value = loss(q, dist.gather_with_grad(d) if gather else d, slice(None))
    if gate(value.detach()):
        engine.backward(value)
    return value.detach()


def gradcache_step(
    engine,
    queries: Tokens,
    docs: Tokens,
    loss: RowLoss,
    *,
    chunks: ChunkPolicy,
    gather: bool,
    gate: Gate = _always,
    check_replay: bool = False,
) -> torch.Tensor:
    """The same gradients as ``plain_step`` with one chunk's activations alive at a time.

    ``check_replay`` asserts that each chunk's re-embedding equals its cached embedding (a test of
    the RNG replay that costs a copy of the embeddings)."""
    device = engine.device
    q_chunks, d_chunks = chunks.plan(queries, docs)
    every = q_chunks + d_chunks
    keep = _largest(every)
    states, cached, kept = [], [], None
    for j, c in enumerate(every):
        states.append(RngState())
        with torch.set_grad_enabled(j == keep):  # the kept chunk's graph serves its backward
            emb = engine(**vars(c.batch.to(device)))
        kept = emb if j == keep else kept
        cached.append(emb.detach())
    q = _in_batch_order(cached[: len(q_chunks)], q_chunks)
    d = _in_batch_order(cached[len(q_chunks) :], d_chunks)
    if not check_replay:
        cached = None  # free the per-chunk copies
    value, q_grad, d_grad = loss_and_grads(loss, q, d, gather=gather)
    del q, d
    if not gate(value):
        return value
    grads = _in_chunk_order(q_grad, q_chunks) + _in_chunk_order(d_grad, d_chunks)
    del q_grad, d_grad
    after = RngState()
    for n, j in enumerate([keep] + [j for j in range(len(every)) if j != keep]):
        engine.set_gradient_accumulation_boundary(n == len(every) - 1)
        if j == keep:
            emb, kept = kept, None
        else:
            states[j].restore()
            emb = engine(**vars(every[j].batch.to(device)))
            if check_replay:
                torch.testing.assert_close(
                    emb.detach(),
                    cached[j],
                    rtol=1e-5,
                    atol=1e-6,
                    msg=f"GradCache replay differs from the cache pass (chunk {j})",
                )
        # d/dθ sum(emb * g) = g · d emb/dθ: the chain rule through the cached gradient
        engine.backward(torch.sum(emb * grads[j]))
        del emb
    after.restore()
    return value


def _largest(chunks: list[Chunk]) -> int:
    """The chunk with the most positions to compute (the last of equals). GradCache embeds it with
    grad in the cache pass and back-propagates that graph directly: one chunk fewer to embed again,
    a large share of the step when a rank has only a few chunks."""
    sizes = [c.batch.input_ids.numel() for c in chunks]
    return len(sizes) - 1 - sizes[::-1].index(max(sizes))
