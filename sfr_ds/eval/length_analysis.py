"""Context-length analysis like the seed's figure: where does model B beat model A, by length?

For every (query, gold document) pair of a local retrieval task, the gold document's rank among
the whole corpus under model A and under model B; the figure plots rank_A - rank_B against the
query's and the document's length (above zero: B ranks the gold document higher), with the mean
per length bin. Lengths are whitespace words, so the two models' tokenizers do not matter.
Embeddings go through the evaluation's cache: models already evaluated on the task are not
re-encoded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_file
from .models import ModelSpec, check_model, label


@dataclass
class Pair:
    query_id: str
    doc_id: str
    query_words: int
    doc_words: int
    rank_a: int
    rank_b: int

    @property
    def diff(self) -> int:
        return self.rank_a - self.rank_b


def gold_ranks(
    queries: np.ndarray, docs: np.ndarray, pairs: list[tuple[int, int]], chunk: int = 256
) -> np.ndarray:
    """1-based rank of each (query row, doc row) pair's document among all docs (ties favour it)."""
    ranks = np.empty(len(pairs), dtype=np.int64)
    by_query: dict[int, list[int]] = {}
    for n, (qi, _) in enumerate(pairs):
        by_query.setdefault(qi, []).append(n)
    rows = sorted(by_query)
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        scores = queries[block] @ docs.T  # [chunk, n_docs]
        for r, qi in enumerate(block):
            for n in by_query[qi]:
                ranks[n] = 1 + int((scores[r] > scores[r, pairs[n][1]]).sum())
    return ranks


def _embed(
    spec: ModelSpec, task, queries: list[str], docs: list[str], cache_dir: str | None, split: str
) -> tuple[np.ndarray, np.ndarray]:
    from mteb.types import PromptType

    from .encoder import MtebEncoder
    from .models import fingerprint, load_model
    from .runner import embedding_cache

    spec = spec.normalized()
    encoder = MtebEncoder(
        load_model(spec), f"sfr-ds/{label(spec)}", fingerprint(spec), embedding_cache(spec, cache_dir)
    )
    name = task.metadata.name
    instruction = encoder.instruction(task.metadata, PromptType.query)
    return (
        encoder.embed(queries, instruction, False, name, split),
        encoder.embed(docs, "", True, name, split),
    )


def analyse(
    spec_a: ModelSpec,
    spec_b: ModelSpec,
    task_spec: str,
    out: Path,
    cache_dir: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``lengths.csv`` and ``lengths.png`` under ``out``; returns their paths. The models, the
    task's data and the outputs are checked before any model loads."""
    from .readers import read_retrieval
    from .specs import parse_local
    from .tasks import local_task

    local = parse_local(task_spec)
    if local is None or local.kind != "retrieval":
        raise ValueError(f"{task_spec}: the length analysis needs a local retrieval task (retrieval:DIR)")
    for spec in (spec_a, spec_b):
        check_model(spec.source)
    read_retrieval(local)
    csv_path, png_path = out / "lengths.csv", out / "lengths.png"
    if not overwrite and (there := [str(p) for p in (csv_path, png_path) if p.exists()]):
        raise ValueError(
            f"{', '.join(there)}: already there; pass --overwrite to replace, or another --output-dir"
        )
    task = local_task(local)
    task.load_data()
    data = task.dataset["default"][local.split]
    doc_ids, doc_texts = data["corpus"]["id"], data["corpus"]["text"]
    query_ids, query_texts = data["queries"]["id"], data["queries"]["text"]
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    pairs = [
        (qi, doc_row[d])
        for qi, q in enumerate(query_ids)
        for d, rel in data["relevant_docs"][q].items()
        if rel > 0 and d in doc_row
    ]
    ranks = [
        gold_ranks(*_embed(spec, task, query_texts, doc_texts, cache_dir, local.split), pairs)
        for spec in (spec_a, spec_b)
    ]
    rows = [
        Pair(
            query_ids[qi],
            doc_ids[di],
            len(query_texts[qi].split()),
            len(doc_texts[di].split()),
            int(ra),
            int(rb),
        )
        for (qi, di), ra, rb in zip(pairs, *ranks)
    ]
    write_csv(rows, csv_path)
    plot(rows, label(spec_a), label(spec_b), task.metadata.name, png_path)
    return csv_path, png_path


def write_csv(rows: list[Pair], path: Path) -> None:
    with atomic_file(path) as f:
        w = csv.writer(f)
        w.writerow(["query_id", "doc_id", "query_words", "doc_words", "rank_a", "rank_b", "rank_a_minus_b"])
        w.writerows(
            [r.query_id, r.doc_id, r.query_words, r.doc_words, r.rank_a, r.rank_b, r.diff] for r in rows
        )


def binned_means(x: np.ndarray, y: np.ndarray, bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Mean of y in quantile bins of x: (bin centres, means)."""
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    keep = [b for b in range(len(edges) - 1) if (which == b).any()]
    centres = np.array([x[which == b].mean() for b in keep])
    return centres, np.array([y[which == b].mean() for b in keep])


def plot(rows: list[Pair], name_a: str, name_b: str, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diff = np.array([r.diff for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, xs, what in (
        (axes[0], [r.query_words for r in rows], "query"),
        (axes[1], [r.doc_words for r in rows], "gold document"),
    ):
        x = np.array(xs, dtype=float)
        ax.scatter(x, diff, s=10, alpha=0.45, color="tab:blue", label="(query, gold doc) pair")
        cx, my = binned_means(x, diff)
        ax.plot(cx, my, "o-", color="tab:red", label="mean per length bin")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_yscale("symlog", linthresh=10)
        ax.set_xlabel(f"{what} length (words)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"rank(gold | {name_a}) − rank(gold | {name_b})")
    axes[0].legend(loc="lower left", fontsize=8)
    wins = float((diff > 0).mean()) * 100
    fig.suptitle(
        f"{task}: {len(rows)} pairs; above 0 = {name_b} ranks the gold document higher "
        f"({wins:.0f}% of pairs), below 0 = {name_a} does"
    )
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
