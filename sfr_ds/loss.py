"""The contrastive loss on embeddings. No model, no communication: callers pass the candidates.

InfoNCE over one positive and every candidate a query is allowed to score. Both loss modes of the
SFR recipe are one mask: in-batch queries may score every gathered document (other queries'
positives and hard negatives, across ranks), labels-as-documents queries (classification,
clustering) only their own positive and negatives. Masked candidates get -inf, so they add exactly
nothing to the softmax. The false-negative and Matryoshka extensions belong here, as further
masks and terms over the same embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import LossConfig

# (query rows [b, d], candidate documents [N, d], which rows of the step's queries they are) ->
# those queries' share of the rank's mean loss: the shares of all row blocks add up to the loss.
RowLoss = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]


class InfoNCE:
    def __init__(self, temperature: float):
        self.temperature = temperature

    @classmethod
    def from_config(cls, cfg: LossConfig) -> InfoNCE:
        return cls(cfg.temperature)

    def logits(self, q: torch.Tensor, docs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """q [n, d], docs [N, d], allowed [n, N] bool -> logits [n, N] (-inf where not allowed)."""
        scores = (q.float() @ docs.float().T) / self.temperature
        return scores.masked_fill(~allowed, float("-inf"))

    def __call__(
        self, q: torch.Tensor, docs: torch.Tensor, positive: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """Mean over the n queries of -log softmax(logits)[positive]; positive [n] indexes docs."""
        return F.cross_entropy(self.logits(q, docs, allowed), positive)

    def by_rows(self, positive: torch.Tensor, allowed: torch.Tensor) -> RowLoss:
        """The step's loss one block of query rows at a time, as ``forward_backward`` runs it.

        ``positive`` [n] lives where the embeddings do; ``allowed`` [n, N] stays on the host (pinned
        on CUDA) and travels one block of rows at a time, so device memory does not grow with
        queries x documents.
        """
        if torch.cuda.is_available():
            allowed = allowed.pin_memory()

        def row_loss(q: torch.Tensor, docs: torch.Tensor, rows: slice) -> torch.Tensor:
            mask = allowed[rows].to(q.device, non_blocking=True)
            share = len(positive[rows]) / len(positive)
            return self(q, docs, positive[rows], mask) * share

        return row_loss
