"""The texts of one global batch, its hard negatives, and which documents each query may score.

Every rank builds the whole global batch's texts (cheap: strings only) from the pure sampler, so
the candidate mask over the gathered documents needs no communication. Documents are laid out
query-major: global query g owns documents ``[g*(1+k), (g+1)*(1+k))``, its positive first.
That is also the order an all-gather of per-rank documents produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .load import group_by_dataset, neg_counts
from .records import Record, RecordError
from .tokens import format_query


@dataclass
class TextBatch:
    queries: list[str]  # formatted with the instruction, [G]
    raw_queries: list[str]  # [G]
    docs: list[str]  # [G*(1+k)]
    own_only: np.ndarray  # [G] bool: labels-as-documents examples score their own documents only
    datasets: list[str]  # [G]
    k: int
    doc_ids: list[str | None] | None = None  # [G*(1+k)] the record's id of each document, if any

    @property
    def group(self) -> int:
        return 1 + self.k

    def needs_gather(self) -> bool:
        """True when some query scores documents of other examples (all ranks agree)."""
        return not bool(self.own_only.all())


class NegativeDrawer:
    """Draws ``k`` hard negatives per record as a function of (seed, epoch, record index)."""

    def __init__(self, records: list[Record], k: int, policy: str, seed: int):
        self.records, self.k, self.policy, self.seed = records, k, policy, seed
        # per dataset and per record from compact columns: memory-mapped records read no text here
        self.pools = {name: np.asarray(v) for name, v in group_by_dataset(records).items()}
        counts = neg_counts(records)
        short = np.flatnonzero(counts < k).tolist()
        self.n_short = len(short)
        self.n_empty = int(np.count_nonzero(counts[short] == 0))
        if short and policy == "error":
            lines = ", ".join(f"#{i} ({records[i].dataset}: {len(records[i].neg)})" for i in short[:10])
            raise RecordError(
                f"{len(short)} records have fewer than data.hard_negatives={k} negatives "
                f"(first: {lines}); choose data.short_negatives=repeat or random"
            )

    def _from_pool(self, rng, i: int, n: int) -> list[str]:
        """Documents of other records of the same dataset (their positives and negatives)."""
        rec, pool, out = self.records[i], self.pools[self.records[i].dataset], []
        banned = set(rec.pos) | {rec.query}
        for _ in range(50 * max(n, 1)):
            if len(out) == n:
                break
            other = self.records[int(pool[rng.integers(len(pool))])]
            docs = other.pos + other.neg
            text = docs[int(rng.integers(len(docs)))]
            if text not in banned:
                out.append(text)
        if len(out) < n:
            raise RecordError(
                f"dataset {rec.dataset!r}: cannot find {n} negatives for record #{i} "
                "among other records (too few distinct documents)"
            )
        return out

    def draw(self, i: int, epoch: int) -> list[str]:
        rec, k = self.records[i], self.k
        if k == 0:
            return []
        rng = np.random.default_rng([self.seed, epoch, i])
        neg = rec.neg
        if len(neg) >= k:
            return [neg[j] for j in rng.choice(len(neg), size=k, replace=False)]
        if self.policy == "random" or not neg:
            return [neg[j] for j in rng.permutation(len(neg))] + self._from_pool(rng, i, k - len(neg))
        # 'repeat': every negative once, then re-draws from the same list
        return [neg[j] for j in rng.permutation(len(neg))] + [
            neg[j] for j in rng.integers(len(neg), size=k - len(neg))
        ]


def own_document_ids(r: Record, texts: list[str]) -> list[str | None]:
    """Each text's document id where the record carries one for it (``pos_ids`` / ``neg_ids``):
    two texts with one id (a document with and without its title, say) are one document. Only the
    record's own ids are read, so no rank holds a table over every record's texts; a text drawn
    from another record's documents has none here (equal texts are caught by text anyway)."""
    known: dict[str, str] = {}
    for docs, name in ((r.pos, "pos_ids"), (r.neg, "neg_ids")):
        for text, i in zip(docs, r.extra.get(name) or ()):
            if i is not None:
                known.setdefault(text, str(i))
    return [known.get(t) for t in texts]


def build_text_batch(
    records: list[Record], indices: np.ndarray, epoch: int, drawer: NegativeDrawer
) -> TextBatch:
    queries, raw, docs, own, names, ids = [], [], [], [], [], []
    pos_rng = np.random.default_rng([drawer.seed, epoch, 0xB0])
    for i in indices:
        r = records[int(i)]
        queries.append(format_query(r.query, r.instruction))
        raw.append(r.query)
        # several positives: one drawn per epoch, deterministically
        pos = r.pos[0] if len(r.pos) == 1 else r.pos[int(pos_rng.integers(len(r.pos)))]
        texts = [pos] + drawer.draw(int(i), epoch)
        docs += texts
        ids += own_document_ids(r, texts)
        own.append(r.loss_mode == "own_negatives")
        names.append(r.dataset)
    return TextBatch(queries, raw, docs, np.asarray(own, dtype=bool), names, drawer.k, ids)


def allowed_mask(batch: TextBatch, rows: slice, mask_duplicates: bool) -> torch.Tensor:
    """[n_rows, G*(1+k)] bool: which documents each query in ``rows`` may be scored against.

    Labels-as-documents queries see only their own documents; the others see every document of
    the in-batch examples. With ``mask_duplicates``, a document is hidden from a query (unless it
    is that query's positive) when its text or its document id (where records carry ids) equals
    the query's positive's, or its text equals the query itself, or it is the positive of another
    example with the same query: the same document is never a negative. The documents are those of
    every rank, so a duplicate on another rank is masked too.
    """
    G, g = len(batch.queries), batch.group
    ids: dict[str, int] = {}
    doc_id = np.asarray([ids.setdefault(t, len(ids)) for t in batch.docs])
    q_id = np.asarray([ids.setdefault(t, len(ids)) for t in batch.raw_queries])
    owner = np.repeat(np.arange(G), g)  # example index of each document
    is_pos = np.zeros(G * g, dtype=bool)
    is_pos[::g] = True
    rows_idx = np.arange(G)[rows]
    own_block = owner[None, :] == rows_idx[:, None]
    in_batch_docs = ~batch.own_only[owner]
    allowed = np.where(batch.own_only[rows_idx][:, None], own_block, in_batch_docs[None, :])
    if mask_duplicates:
        pos_id = doc_id[rows_idx * g]
        same_text = (doc_id[None, :] == pos_id[:, None]) | (doc_id[None, :] == q_id[rows_idx][:, None])
        if batch.doc_ids is not None:
            key = _id_keys(batch.doc_ids)
            same_text |= key[None, :] == key[rows_idx * g][:, None]
        same_query = (q_id[owner][None, :] == q_id[rows_idx][:, None]) & is_pos[None, :]
        allowed &= ~((same_text | same_query) & ~(own_block & is_pos[None, :]))
    return torch.from_numpy(allowed)


def _id_keys(doc_ids: list[str | None]) -> np.ndarray:
    """One int per document: equal for equal ids, unique (negative) for a document without one."""
    keys: dict[str, int] = {}
    return np.asarray([-1 - j if i is None else keys.setdefault(i, len(keys)) for j, i in enumerate(doc_ids)])
