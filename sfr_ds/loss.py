"""The contrastive loss on embeddings. No model, no communication: callers pass the candidates.

InfoNCE over one positive and every candidate a query is allowed to score. Both loss modes of the
SFR recipe are one mask: in-batch queries may score every gathered document (other queries'
positives and hard negatives, across ranks), labels-as-documents queries (classification,
clustering) only their own positive and negatives. Masked candidates get -inf, so they add exactly
nothing to the softmax. The false-negative extension belongs here too, as a further mask.

Matryoshka (Kusupati et al., 2022): with ``dims`` the loss is the weighted sum of the same InfoNCE
over each prefix of the embeddings (renormalised when the model normalises), so the first d
dimensions become an embedding of their own. It works on the embeddings the caller already has
(GradCache's cached ones, gathered across ranks), so it adds no forward pass and every mask
applies at every width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .config import ConfigError, LossConfig


def check_matryoshka_dims(cfg: LossConfig, width: int) -> None:
    """Every Matryoshka prefix must fit in the model's embeddings (``width``: from its config)."""
    if too_wide := [d for d in cfg.matryoshka_dims if d > width]:
        raise ConfigError(
            [f"'loss.matryoshka_dims': {too_wide} exceed the model's embedding width ({width})"]
        )


# (query rows [b, d], candidate documents [N, d], which rows of the step's queries they are) ->
# those queries' share of the rank's mean loss: the shares of all row blocks add up to the loss.
RowLoss = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]


class InfoNCE:
    def __init__(
        self,
        temperature: float,
        dims: Sequence[int] = (),
        weights: Sequence[float] = (),
        normalize: bool = True,
    ):
        self.temperature, self.normalize = temperature, normalize
        self.dims = list(dims)
        self.weights = [float(w) for w in weights] or [1.0] * len(self.dims)

    @classmethod
    def from_config(cls, cfg: LossConfig, normalize: bool = True) -> InfoNCE:
        return cls(cfg.temperature, cfg.matryoshka_dims, cfg.matryoshka_weights, normalize)

    def prefix(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The first ``dim`` dimensions as an embedding of their own; the full width untouched."""
        if dim >= x.shape[-1]:
            return x
        x = x[..., :dim]
        return F.normalize(x.float(), dim=-1) if self.normalize else x

    def logits(self, q: torch.Tensor, docs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """q [n, d], docs [N, d], allowed [n, N] bool -> logits [n, N] (-inf where not allowed)."""
        scores = (q.float() @ docs.float().T) / self.temperature
        return scores.masked_fill(~allowed, float("-inf"))

    def __call__(
        self, q: torch.Tensor, docs: torch.Tensor, positive: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """Mean over the n queries of -log softmax(logits)[positive]; positive [n] indexes docs.
        With Matryoshka dims, the weighted sum of that loss over the prefixes."""
        if not self.dims:
            return F.cross_entropy(self.logits(q, docs, allowed), positive)
        return sum(
            w * F.cross_entropy(self.logits(self.prefix(q, d), self.prefix(docs, d), allowed), positive)
            for d, w in zip(self.dims, self.weights)
        )

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
