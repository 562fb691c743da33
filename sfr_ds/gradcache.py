"""One training step's forward/backward: plain, or GradCache through the DeepSpeed engine.

GradCache (Gao et al., 2021) makes the loss over a huge batch cost the memory of one chunk:
  1. embed every chunk without grad (nothing stored), remembering each chunk's RNG state;
  2. run the loss, cross-rank gather included, on the detached embeddings and keep d loss/d emb;
  3. re-embed each chunk with grad under the same RNG state (identical dropout) and back-propagate
     the cached gradient with ``engine.backward``; only the last chunk is a gradient-accumulation
     boundary, so DeepSpeed reduces gradients once and the caller takes a single optimizer step.
The engine is used duck-typed (``engine(...)``, ``.backward``, ``.set_gradient_accumulation_boundary``)
so this module does not import deepspeed.
"""
from __future__ import annotations

from typing import Callable

import torch

from .data.collate import Tokens

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (q [n,d], docs [m,d]) -> scalar
# Called with the local loss before any parameter gradient exists; False skips the backward (all
# ranks must agree, so the gate is where the step's one collective happens).
Gate = Callable[[torch.Tensor], bool]


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


def _chunks(tokens: Tokens, size: int) -> list[Tokens]:
    return [tokens.slice(i, min(i + size, len(tokens))) for i in range(0, len(tokens), size)]


def plain_backward(engine, queries: Tokens, docs: Tokens, loss_fn: LossFn,
                   gate: Gate = _always) -> torch.Tensor:
    """Forward the whole local batch with grad, then ``engine.backward``. Returns the local loss."""
    device = engine.device
    q = engine(**vars(queries.to(device)))
    d = engine(**vars(docs.to(device)))
    loss = loss_fn(q, d)
    if gate(loss.detach()):
        engine.backward(loss)
    return loss.detach()


def gradcache_backward(engine, queries: Tokens, docs: Tokens, loss_fn: LossFn, chunk_size: int,
                       check_replay: bool = False, gate: Gate = _always) -> torch.Tensor:
    """The same gradients as ``plain_backward`` with one chunk's activations alive at a time."""
    device = engine.device
    chunks = _chunks(queries, chunk_size) + _chunks(docs, chunk_size)
    n_query_chunks = -(-len(queries) // chunk_size)
    states, cached = [], []
    with torch.no_grad():
        for c in chunks:
            states.append(RngState())
            cached.append(engine(**vars(c.to(device))))
    q = torch.cat(cached[:n_query_chunks]).requires_grad_(True)
    d = torch.cat(cached[n_query_chunks:]).requires_grad_(True)
    loss = loss_fn(q, d)
    if not gate(loss.detach()):
        return loss.detach()
    loss.backward()
    grads = list(q.grad.split(chunk_size)) + list(d.grad.split(chunk_size))
    after = RngState()
    for j, (c, state, g) in enumerate(zip(chunks, states, grads)):
        engine.set_gradient_accumulation_boundary(j == len(chunks) - 1)
        state.restore()
        emb = engine(**vars(c.to(device)))
        if check_replay:
            torch.testing.assert_close(emb.detach(), cached[j], rtol=1e-5, atol=1e-6,
                                       msg=f"GradCache replay differs from the cache pass (chunk {j})")
        # d/dθ sum(emb * g) = g · d emb/dθ: the chain rule through the cached gradient
        engine.backward(torch.sum(emb * g))
    after.restore()
    return loss.detach()
