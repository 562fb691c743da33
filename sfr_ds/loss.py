"""InfoNCE on embeddings. No model, no communication: callers pass the candidates they gathered.

Both loss modes of the seed are one function with a mask: ``in_batch`` allows every gathered
document, ``own_negatives`` (labels as documents) allows only the query's own positive and
negatives. Masked candidates get -inf, so they add exactly nothing to the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_logits(
    q: torch.Tensor, docs: torch.Tensor, allowed: torch.Tensor, temperature: float
) -> torch.Tensor:
    """q [n, d], docs [N, d], allowed [n, N] bool -> logits [n, N] (-inf where not allowed)."""
    scores = (q.float() @ docs.float().T) / temperature
    return scores.masked_fill(~allowed, float("-inf"))


def contrastive_loss(
    q: torch.Tensor, docs: torch.Tensor, positive: torch.Tensor, allowed: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over the n queries of -log softmax(logits)[positive]; positive [n] indexes docs."""
    logits = contrastive_logits(q, docs, allowed, temperature)
    return F.cross_entropy(logits, positive)
