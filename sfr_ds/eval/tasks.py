"""Task specs: MTEB tasks by name or benchmark, and local files as custom MTEB tasks.

A spec is one string, so a manifest (and a Slurm job) can name its tasks:

- ``SciFact``, ``STS12``: an MTEB task by name (its data loads from the hub when reachable);
  ``benchmark:NAME`` expands to the tasks of an MTEB benchmark.
- ``KIND:PATH[?key=value&...]``: local data scored by mteb's own evaluators.

  ============== ================================================ ==================
  KIND           PATH                                             main score
  ============== ================================================ ==================
  retrieval      BEIR folder (corpus.jsonl, queries.jsonl,        nDCG@10
                 qrels/SPLIT.tsv)
  sts            STS-B tsv (genre, file, year, id, score, s1, s2)  Spearman (cosine)
                 or JSONL {sentence1, sentence2, score}
  classification folder with train.csv and SPLIT.csv (text,        accuracy (logistic
                 category)                                        regression)
  clustering     labelled CSV, or a folder with SPLIT.csv          V-measure
  reranking      JSONL {query, positive, negative} or a TSV of     MAP@1000
                 query, candidate, label 0/1 rows (WikiQA)
  ============== ================================================ ==================

  Keys: ``name`` (task name), ``split`` (default ``test``), ``text`` and ``label`` (CSV columns,
  default ``text``/``category``), ``train`` (classification training file), ``instruction``.

A local copy of a known MTEB task (``retrieval:.../scifact`` is ``SciFact``) subclasses the MTEB
task itself: same name, instruction, main score and evaluator settings, only the data is local, so
its score is comparable with published ones. Other local data get a generic task of its kind.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

KINDS = {
    "retrieval": "Retrieval",
    "reranking": "Reranking",
    "sts": "STS",
    "classification": "Classification",
    "clustering": "Clustering",
}
MAIN_SCORES = {
    "retrieval": "ndcg_at_10",
    "reranking": "map_at_1000",
    "sts": "cosine_spearman",
    "classification": "accuracy",
    "clustering": "v_measure",
}
# Local folders that hold the data of an MTEB task (or, for clustering/reranking, a task named
# in the same style): (kind, folder name) -> task name.
KNOWN = {
    ("retrieval", "scifact"): "SciFact",
    ("sts", "stsbenchmark"): "STSBenchmark",
    ("classification", "banking77"): "Banking77Classification",
    ("clustering", "banking77"): "Banking77Clustering",
    ("reranking", "wikiqa"): "WikiQAReranking",
}
OPTIONS = {"name", "split", "text", "label", "train", "instruction"}


class TaskSpecError(ValueError):
    pass


@dataclass(frozen=True)
class LocalSpec:
    kind: str
    path: Path
    options: dict[str, str] = field(default_factory=dict)

    @property
    def split(self) -> str:
        return self.options.get("split", "test")

    @property
    def folder_name(self) -> str:
        return (self.path if self.path.is_dir() else self.path.parent).name.lower()

    @property
    def mteb_name(self) -> str | None:
        """The MTEB task this is a local copy of, if any."""
        return self.options.get("name") or KNOWN.get((self.kind, self.folder_name))

    @property
    def name(self) -> str:
        base = self.mteb_name or f"{self.folder_name}-{self.kind}"
        return base if self.split == "test" or "name" in self.options else f"{base}.{self.split}"

    def spec(self) -> str:
        query = f"?{urlencode(sorted(self.options.items()))}" if self.options else ""
        return f"{self.kind}:{self.path}{query}"


@dataclass
class TaskEntry:
    """One task of an evaluation, as the manifest records it."""

    spec: str
    name: str
    type: str  # mteb task type: Retrieval, STS, ...
    group: str  # row of the results table: the suite's group, else the type

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def split_tasks(values: tuple[str, ...]) -> list[str]:
    """Specs of repeated, comma-separated ``--tasks`` values; a comma inside parentheses does not
    split, so ``benchmark:MTEB(eng, v2)`` stays whole."""
    return [s.strip() for v in values for s in re.split(r",(?![^()]*\))", v) if s.strip()]


def parse_local(spec: str) -> LocalSpec | None:
    """``KIND:PATH?k=v`` -> LocalSpec with an absolute path; anything else -> None (MTEB name)."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        return None
    path, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    if unknown := set(options) - OPTIONS:
        raise TaskSpecError(f"{spec}: unknown option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
    local = LocalSpec(kind, Path(path).expanduser().resolve(), options)
    if not local.path.exists():
        raise TaskSpecError(f"{spec}: {local.path} does not exist")
    return local


def describe(spec: str, group: str | None = None) -> list[TaskEntry]:
    """The task(s) a spec names; only MTEB names and benchmarks import mteb."""
    local = parse_local(spec)
    if local is not None:
        return [TaskEntry(local.spec(), local.name, KINDS[local.kind], group or KINDS[local.kind])]
    import mteb

    if spec.startswith("benchmark:"):
        tasks = mteb.get_benchmark(spec.removeprefix("benchmark:")).tasks
    else:
        try:
            tasks = [mteb.get_task(spec)]
        except KeyError:
            raise TaskSpecError(
                f"{spec!r} is neither an MTEB task nor KIND:PATH with KIND in "
                f"{sorted(KINDS)} (benchmarks: benchmark:NAME)"
            ) from None
    return [
        TaskEntry(t.metadata.name, t.metadata.name, t.metadata.type, group or t.metadata.type) for t in tasks
    ]


# ------------------------------------------------------------------------------- readers


def _beir(local: LocalSpec) -> dict:
    from datasets import Dataset
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    from ..data.prepare import _load_qrels, _load_queries, load_beir_corpus

    corpus = load_beir_corpus(local.path / "corpus.jsonl")
    queries = _load_queries(local.path / "queries.jsonl")
    qrels = _load_qrels(local.path / "qrels" / f"{local.split}.tsv")
    relevant = {q: {d: int(s) for d, s in judged} for q, judged in qrels.items() if q in queries}
    split = RetrievalSplitData(
        corpus=Dataset.from_dict(
            {"id": list(corpus), "title": [""] * len(corpus), "text": list(corpus.values())}
        ),
        queries=Dataset.from_dict({"id": list(relevant), "text": [queries[q] for q in relevant]}),
        relevant_docs=relevant,
        top_ranked=None,
    )
    return {"default": {local.split: split}}


def _reranking_groups(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """query -> (positives, negatives), from JSONL or query<TAB>candidate<TAB>label rows."""
    groups: dict[str, tuple[list[str], list[str]]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".jsonl":
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    pos, neg = groups.setdefault(obj["query"], ([], []))
                    pos.extend(obj["positive"])
                    neg.extend(obj["negative"])
            return groups
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) < 3 or row[2].strip() not in ("0", "1"):
                raise TaskSpecError(f"{path}:{lineno}: expected query<TAB>candidate<TAB>0|1")
            pos, neg = groups.setdefault(row[0].strip(), ([], []))
            (pos if row[2].strip() == "1" else neg).append(row[1].strip())
    return groups


def _reranking(local: LocalSpec) -> dict:
    """Each query ranks only its own candidates (mteb's top_ranked); queries with no positive are
    dropped, as nothing can be found for them."""
    from datasets import Dataset
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    ids, texts, queries, relevant, top = [], [], {}, {}, {}
    for q, (pos, neg) in _reranking_groups(local.path).items():
        if not pos:
            continue
        qid = f"q{len(queries)}"
        queries[qid] = q
        cands = [(f"{qid}-{i}", t, i < len(pos)) for i, t in enumerate(pos + neg)]
        ids += [c[0] for c in cands]
        texts += [c[1] for c in cands]
        top[qid] = [c[0] for c in cands]
        relevant[qid] = {cid: 1 for cid, _, is_pos in cands if is_pos}
    split = RetrievalSplitData(
        corpus=Dataset.from_dict({"id": ids, "title": [""] * len(ids), "text": texts}),
        queries=Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
        relevant_docs=relevant,
        top_ranked=top,
    )
    return {"default": {local.split: split}}


def _sts(local: LocalSpec):
    from datasets import Dataset, DatasetDict

    rows: dict[str, list] = {"sentence1": [], "sentence2": [], "score": []}
    with open(local.path, encoding="utf-8", newline="") as f:
        if local.path.suffix == ".jsonl":
            pairs = [json.loads(line) for line in f if line.strip()]
            triples = [(p["sentence1"], p["sentence2"], p["score"]) for p in pairs]
        else:
            triples = []
            for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                try:
                    triples.append((row[5], row[6], float(row[4])))
                except (IndexError, ValueError):
                    raise TaskSpecError(
                        f"{local.path}:{lineno}: expected genre, file, year, id, "
                        "score, sentence1, sentence2 (tab-separated)"
                    ) from None
    for s1, s2, score in triples:
        rows["sentence1"].append(s1.strip())
        rows["sentence2"].append(s2.strip())
        rows["score"].append(float(score))
    return DatasetDict({local.split: Dataset.from_dict(rows)})


def _labelled(local: LocalSpec, split: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of a split: SPLIT.csv (or the ``train`` option) in a folder, else the file."""
    from ..data.prepare import _read_labelled

    path = local.path
    if path.is_dir():
        path = path / (
            local.options["train"] if split == "train" and "train" in local.options else f"{split}.csv"
        )
    rows = list(
        _read_labelled(path, local.options.get("text", "text"), local.options.get("label", "category"))
    )
    return [text for text, _, _ in rows], [label for _, label, _ in rows]


def _classification(local: LocalSpec):
    from datasets import Dataset, DatasetDict

    parts = {"train": _labelled(local, "train"), local.split: _labelled(local, local.split)}
    ids = {label: i for i, label in enumerate(sorted({lb for _, labels in parts.values() for lb in labels}))}
    return DatasetDict(
        {
            split: Dataset.from_dict({"text": texts, "label": [ids[lb] for lb in labels]})
            for split, (texts, labels) in parts.items()
        }
    )


def _clustering(local: LocalSpec):
    from datasets import Dataset, DatasetDict

    texts, labels = _labelled(local, local.split)
    return DatasetDict({local.split: Dataset.from_dict({"sentences": texts, "labels": labels})})


LOADERS = {
    "retrieval": _beir,
    "reranking": _reranking,
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
