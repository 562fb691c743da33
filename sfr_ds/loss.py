"""The contrastive loss on embeddings. No model, no communication: callers pass the candidates.

InfoNCE over one positive and every candidate a query is allowed to score. Both loss modes of the
SFR recipe are one mask: in-batch queries may score every gathered document (other queries'
positives and hard negatives, across ranks), labels-as-documents queries (classification,
clustering) only their own positive and negatives. Masked candidates get -inf, so they add exactly
nothing to the softmax.

False negatives (Qwen3-Embedding, 2025): with ``false_negative_margin`` δ, a candidate whose
score q·d (before the temperature) exceeds the query's positive score + δ is taken for an
unlabelled positive and masked out too. The scores are the model's own, on the embeddings the loss
already has, detached: the mask carries no gradient, and since GradCache runs the loss once on the
cached embeddings (gathered from every rank), its gradient pass back-propagates exactly that
mask's loss; every rank computes its own rows' mask over the same gathered documents.

Matryoshka (Kusupati et al., 2022): with ``dims`` the loss is the weighted sum of the same InfoNCE
over each prefix of the embeddings (renormalised when the model normalises), so the first d
dimensions become an embedding of their own. It works on the embeddings the caller already has
(GradCache's cached ones, gathered across ranks), so it adds no forward pass and every mask
applies at every width. The false-negative mask is computed once, from the full-width scores, and
applied at every width: one notion of "this document is a positive" for all prefixes.
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
        false_negative_margin: float | None = None,
    ):
        self.temperature, self.normalize = temperature, normalize
        self.dims = list(dims)
        self.weights = [float(w) for w in weights] or [1.0] * len(self.dims)
        self.margin = false_negative_margin
        self._masked = torch.zeros((), dtype=torch.int64)  # false negatives masked since take_masked

    @classmethod
    def from_config(cls, cfg: LossConfig, normalize: bool = True) -> InfoNCE:
        return cls(
            cfg.temperature, cfg.matryoshka_dims, cfg.matryoshka_weights, normalize, cfg.false_negative_margin
        )

    def false_negatives(
        self, q: torch.Tensor, docs: torch.Tensor, positive: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """[n, N] bool: allowed candidates, other than the positive, scoring above positive + margin.
        From detached scores, so the mask is a constant to autograd."""
        with torch.no_grad():
            scores = q.detach().float() @ docs.detach().float().T  # [n, N]
            over = (scores > scores.gather(1, positive[:, None]) + self.margin) & allowed
            over[torch.arange(len(positive), device=over.device), positive] = False
        return over

    def take_masked(self) -> torch.Tensor:
        """How many candidates the false-negative mask removed since the last call (a device
        tensor: reading it is the caller's synchronisation), and reset the count."""
        out, self._masked = self._masked, torch.zeros((), dtype=torch.int64)
        return out

    def _without_false_negatives(
        self, q: torch.Tensor, docs: torch.Tensor, positive: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        if self.margin is None:
            return allowed
        over = self.false_negatives(q, docs, positive, allowed)
        self._masked = self._masked.to(over.device) + over.sum()
        return allowed & ~over

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
        allowed = self._without_false_negatives(q, docs, positive, allowed)
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
