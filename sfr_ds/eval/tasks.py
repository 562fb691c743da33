"""Local task data as MTEB tasks (``LOADERS``, ``local_task``), and MTEB's own tasks by name.

A local copy of a known MTEB task (``retrieval:.../scifact`` is ``SciFact``) subclasses the MTEB
task itself: same name, instruction, main score and evaluator settings, only the data is local, so
its score is comparable with published ones. Other local data get a generic task of its kind.
"""

from __future__ import annotations

from typing import Any

from .readers import Ranking, read_classification, read_clustering, read_reranking, read_retrieval, read_sts
from .specs import KINDS, MAIN_SCORES, LocalSpec, parse_local

# ------------------------------------------------------------------------------- datasets


def _retrieval_split(data: Ranking):
    from datasets import Dataset
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    return RetrievalSplitData(
        corpus=Dataset.from_dict(
            {"id": list(data.corpus), "title": [""] * len(data.corpus), "text": list(data.corpus.values())}
        ),
        queries=Dataset.from_dict(
            {"id": list(data.relevant), "text": [data.queries[q] for q in data.relevant]}
        ),
        relevant_docs=data.relevant,
        top_ranked=data.top_ranked,
    )


def _retrieval(local: LocalSpec) -> dict:
    reader = read_retrieval if local.kind == "retrieval" else read_reranking
    return {"default": {local.split: _retrieval_split(reader(local))}}


def _sts(local: LocalSpec):
    from datasets import Dataset, DatasetDict

    s1, s2, scores = zip(*read_sts(local))
    rows = {"sentence1": list(s1), "sentence2": list(s2), "score": list(scores)}
    return DatasetDict({local.split: Dataset.from_dict(rows)})


def _classification(local: LocalSpec):
    from datasets import Dataset, DatasetDict

    parts = read_classification(local)
    ids = {label: i for i, label in enumerate(sorted({lb for _, labels in parts.values() for lb in labels}))}
    return DatasetDict(
        {
            split: Dataset.from_dict({"text": texts, "label": [ids[lb] for lb in labels]})
            for split, (texts, labels) in parts.items()
        }
    )


def _clustering(local: LocalSpec):
    from datasets import Dataset, DatasetDict

    texts, labels = read_clustering(local)
    return DatasetDict({local.split: Dataset.from_dict({"sentences": texts, "labels": labels})})


LOADERS = {
    "retrieval": _retrieval,
    "reranking": _retrieval,
    "sts": _sts,
    "classification": _classification,
    "clustering": _clustering,
}


# ------------------------------------------------------------------------------- tasks


class _LocalData:
    """Mixed in before an mteb task class: data from local files instead of the hub."""

    local: LocalSpec

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = LOADERS[self.local.kind](self.local)
        if self.local.kind == "clustering":
            # Embed every text and bootstrap over all of them. mteb's default embeds 4% of the
            # split: 12 of 300 texts, whose resamples of 300 (duplicates cluster together) gave
            # an untrained model a V-measure of 0.90.
            self.max_fraction_of_documents_to_embed = None
            self.max_document_to_embed = None
            self.max_documents_per_cluster = len(self.dataset[self.local.split])
        self.data_loaded = True


def _abstract_base(kind: str) -> type:
    from mteb.abstasks import AbsTaskClassification, AbsTaskClustering, AbsTaskRetrieval, AbsTaskSTS

    return {
        "retrieval": AbsTaskRetrieval,
        "reranking": AbsTaskRetrieval,
        "sts": AbsTaskSTS,
        "classification": AbsTaskClassification,
        "clustering": AbsTaskClustering,
    }[kind]


def _prompt(kind: str, instruction: str | None) -> str | dict[str, str] | None:
    """mteb's prompt field: asymmetric tasks instruct their queries only."""
    if instruction and kind in ("retrieval", "reranking"):
        return {"query": instruction}
    return instruction or None


def _generic_metadata(local: LocalSpec):
    from mteb.abstasks.task_metadata import TaskMetadata

    from ..data.prepare import INSTRUCTIONS

    instruction = local.options.get("instruction") or INSTRUCTIONS.get(local.folder_name)
    return TaskMetadata(
        name=local.name,
        type=KINDS[local.kind],
        main_score=MAIN_SCORES[local.kind],
        description=f"Local {local.kind} data from {local.path}.",
        prompt=_prompt(local.kind, instruction),
        reference=None,
        dataset={"path": str(local.path), "revision": "local"},
        category="t2t",
        eval_splits=[local.split],
        eval_langs=["eng-Latn"],
        date=None,
        dialect=[],
        domains=[],
        task_subtypes=[],
        license="not specified",
        annotations_creators="derived",
        modalities=["text"],
        sample_creation="found",
        bibtex_citation="",
    )


def local_task(local: LocalSpec):
    """An mteb task over local files (see the module docstring for how it is named and scored)."""
    import mteb

    abstract = _abstract_base(local.kind)
    base, metadata = abstract, None
    if local.mteb_name:
        try:
            known = mteb.get_task(local.mteb_name)
        except KeyError:
            known = None
        if known is not None and isinstance(known, abstract) and known.metadata.type == KINDS[local.kind]:
            base = type(known)
            update = {
                "name": local.name,
                "eval_splits": [local.split],
                "superseded_by": None,
                "dataset": {"path": str(local.path), "revision": "local"},
                "description": f"{known.metadata.description} Local copy: {local.path}.",
            }
            if "instruction" in local.options:
                update["prompt"] = _prompt(local.kind, local.options["instruction"])
            metadata = known.metadata.model_copy(update=update)
    if metadata is None:
        metadata = _generic_metadata(local)
    cls = type(f"Local{base.__name__}", (_LocalData, base), {"metadata": metadata, "local": local})
    return cls()


def build_task(spec: str):
    """The mteb task object for one spec (data not loaded yet)."""
    local = parse_local(spec)
    if local is not None:
        return local_task(local)
    import mteb

    return mteb.get_task(spec)
