"""Turn real sources (BEIR folders, STS pairs, labelled texts) into training records.

Every function returns ``(records, report)``: the records already pass ``check_record`` (so a
later step never meets a half-valid one) and the report says how many source items were dropped
and why, so a user can tell a small output from a broken input. Negatives are left empty for
retrieval and STS; mining fills them later. Malformed input lines (bad JSON or CSV, bytes that
are not UTF-8, a repeated id) raise ``RecordError`` with the file and 1-based line, as
``records.read_jsonl`` does.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sfr_ds.data.records import (
    OWN_NEGATIVE_TASKS,
    Record,
    RecordError,
    check_record,
    csv_rows,
    iter_jsonl,
    table_reader,
    text_lines,
)

# Task instructions in the e5-mistral style (one sentence, no trailing "Query:"); keys are
# lower-case dataset names. Symmetric tasks (STS) use one generic instruction for both sides.
INSTRUCTIONS: dict[str, str] = {
    # retrieval
    "msmarco": "Given a web search query, retrieve relevant passages that answer the query",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "hotpotqa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "climate-fever": "Given a claim about climate change, retrieve documents that support or "
    "refute the claim",
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "fiqa": "Given a financial question, retrieve user replies that best answer the question",
    "quora": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "arguana": "Given a claim, find documents that refute the claim",
    "nfcorpus": "Given a question, retrieve relevant documents that best answer the question",
    "scidocs": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "trec-covid": "Given a query on COVID-19, retrieve documents that answer the query",
    "touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "dbpedia-entity": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "squad": "Retrieve Wikipedia passages that answer the question",
    "triviaqa": "Retrieve Wikipedia passages that answer the question",
    "eli5": "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
    "pubmedqa": "Given a biomedical question, retrieve PubMed abstracts that answer the question",
    "wikiqa": "Given a question, retrieve Wikipedia sentences that answer the question",
    # sts / nli / pair classification
    "stsb": "Retrieve semantically similar text.",
    "sts": "Retrieve semantically similar text.",
    "sickr": "Retrieve semantically similar text.",
    "nli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "sprintduplicatequestions": "Retrieve duplicate questions from Sprint forum",
    "twittersemeval2015": "Retrieve tweets that are semantically similar to the given tweet",
    # reranking
    "askubuntudupquestions": "Retrieve duplicate questions from AskUbuntu forum",
    "stackoverflowdupquestions": "Retrieve duplicate questions from StackOverflow forum",
    "scidocsrr": "Given a title of a scientific paper, retrieve the titles of other relevant papers",
    # classification
    "banking77": "Given a online banking query, find the corresponding intents",
    "emotion": "Classify the emotion expressed in the given Twitter message into one of the six "
    "emotions: anger, fear, joy, love, sadness, and surprise",
    "imdb": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
    "amazon_polarity": "Classify Amazon reviews into positive or negative sentiment",
    "toxic_conversations": "Classify the given comments as either toxic or not toxic",
    "tweet_sentiment_extraction": "Classify the sentiment of a given tweet as either positive, "
    "negative, or neutral",
    # clustering
    "twentynewsgroups": "Identify the topic or theme of the given news articles",
    "arxiv": "Identify the main and secondary category of Arxiv papers based on the titles and abstracts",
    "reddit": "Identify the topic or theme of Reddit posts based on the titles",
    "stackexchange": "Identify the topic or theme of StackExchange posts based on the titles",
    "medrxiv": "Identify the main category of Medrxiv papers based on the titles and abstracts",
    "biorxiv": "Identify the main category of Biorxiv papers based on the titles and abstracts",
    # summarization
    "summeval": "Given a news summary, retrieve other semantically similar summaries",
}


@dataclass
class PrepareReport:
    """What one preparation call kept and dropped: ``written`` counts records, ``skipped``
    counts source items (queries, pairs, rows) with a count per reason."""

    source: str
    written: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def __str__(self) -> str:
        why = ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items()))
        return f"{self.source}: {self.written} written, {self.skipped} skipped" + (f" ({why})" if why else "")


def instruction_for(dataset: str, instruction: str | None) -> str:
    """The given instruction, else the table's; an unknown dataset must name one explicitly."""
    if instruction is not None:
        return instruction
    try:
        return INSTRUCTIONS[dataset.lower()]
    except KeyError:
        raise ValueError(
            f"no built-in instruction for dataset {dataset!r}; pass instruction=... "
            f"(known: {', '.join(sorted(INSTRUCTIONS))})"
        ) from None


def _emit(record: Record, where: str, out: list[Record], report: PrepareReport) -> None:
    out.append(check_record(record.to_json(), where))
    report.written += 1


# ---------------------------------------------------------------------------------------- BEIR


def _read_beir_jsonl(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """Yield (``file:line``, object) of a BEIR JSONL file, failing loudly (file:line) on a bad line.

    ``_id`` is required (a number is read as its string) and unique: a repeated id would silently
    replace the earlier document or query. The other ``fields`` may be absent (BEIR omits empty
    titles) but must be strings when present.
    """
    first: dict[str, str] = {}
    for where, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object")
        if not isinstance(obj.get("_id"), (str, int)) or isinstance(obj["_id"], bool):
            raise RecordError(f"{where}: field '_id' is missing or not a string")
        obj["_id"] = str(obj["_id"])  # some dumps write numeric ids; qrels hold strings
        if obj["_id"] in first:
            raise RecordError(f"{where}: _id {obj['_id']!r} repeated (first at {first[obj['_id']]})")
        first[obj["_id"]] = where
        for name in fields:
            if not isinstance(obj.get(name, ""), str):
                raise RecordError(f"{where}: field '{name}' is not a string")
        yield where, obj


def doc_text(title: str, text: str) -> str:
    """BEIR's usual document string: ``title text`` when there is a title."""
    title, text = title.strip(), text.strip()
    return f"{title} {text}" if title else text


def load_beir_corpus(path: str | os.PathLike) -> dict[str, str]:
    """Map doc id to its document string (see ``doc_text``)."""
    return {
        obj["_id"]: doc_text(obj.get("title", ""), obj.get("text", ""))
        for _, obj in _read_beir_jsonl(Path(path), ("title", "text"))
    }


def _load_queries(path: Path) -> dict[str, str]:
    return {obj["_id"]: obj.get("text", "").strip() for _, obj in _read_beir_jsonl(path, ("text",))}


def _load_qrels(path: Path) -> dict[str, list[tuple[str, float]]]:
    """Query id -> [(doc id, score)] in file order; the header row is optional."""
    qrels: dict[str, list[tuple[str, float]]] = {}
    reader = table_reader(path, tabs=True)
    for row in csv_rows(path, reader, "TSV"):
        lineno = reader.line_num
        if not row or (lineno == 1 and row[0] == "query-id"):
            continue
        try:
            qid, did, score = row[0], row[1], float(row[2])
        except (IndexError, ValueError):
            raise RecordError(
                f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}"
            ) from None
        qrels.setdefault(qid, []).append((did, score))
    return qrels


def from_beir(
    dir: str | os.PathLike, split: str, dataset: str, instruction: str | None = None
) -> tuple[list[Record], PrepareReport]:
    """Retrieval records from a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).

    One record per query of the split, in qrels order; positives are the docs with score > 0.
    A query whose qrels name a doc missing from the corpus is dropped whole: its judgements
    do not match this corpus, so its remaining positives cannot be trusted either.
    """
    root = Path(dir)
    if not root.is_dir():
        raise RecordError(
            f"{root}: not a folder; a BEIR source is a folder (corpus.jsonl, queries.jsonl, qrels/)"
        )
    instruction = instruction_for(dataset, instruction)
    corpus = load_beir_corpus(root / "corpus.jsonl")
    queries = _load_queries(root / "queries.jsonl")
    qrels_path = root / "qrels" / f"{split}.tsv"
    report = PrepareReport(str(qrels_path))
    records: list[Record] = []
    for qid, judged in _load_qrels(qrels_path).items():
        pos_ids = list(dict.fromkeys(did for did, score in judged if score > 0))
        if qid not in queries:
            report.skip("unknown query id")
        elif not queries[qid]:
            report.skip("empty query")
        elif any(did not in corpus for did, _ in judged):
            report.skip("unknown doc id")
        elif not pos_ids:
            report.skip("no relevant doc")
        elif any(not corpus[did] for did in pos_ids):
            report.skip("empty document")
        else:
            record = Record(
                queries[qid],
                [corpus[d] for d in pos_ids],
                [],
                "retrieval",
                dataset,
                instruction,
                {"query_id": qid, "pos_ids": pos_ids},
            )
            _emit(record, f"{qrels_path} query {qid}", records, report)
    return records, report


# ----------------------------------------------------------------------------------------- STS


def from_sts(
    path: str | os.PathLike, dataset: str, instruction: str | None = None, min_score: float = 4.0
) -> tuple[list[Record], PrepareReport]:
    """STS-benchmark pairs (tab-separated; score in column 5, sentences in 6-7) as sts records.

    Policy: only pairs scored >= ``min_score`` are positives (a 3/5 pair is related, not a
    paraphrase, and would teach the model to pull merely topical text together). Each kept
    pair gives two records, s1 -> s2 and s2 -> s1, because the task is symmetric and the
    instruction does not say which side is the query. Negatives are left to mining.
    Extra columns after sentence2 (licence notes in some rows) are ignored.
    """
    instruction = instruction_for(dataset, instruction)
    report = PrepareReport(os.fspath(path))
    records: list[Record] = []
    reader = table_reader(path, tabs=True)
    for row in csv_rows(path, reader, "TSV"):
        where = f"{path}:{reader.line_num}"
        if not row:
            continue
        try:
            score = float(row[4])
            s1, s2 = row[5].strip(), row[6].strip()
        except (IndexError, ValueError):
            raise RecordError(
                f"{where}: expected genre, filename, year, id, score, sentence1, sentence2 (tab-separated)"
            ) from None
        if score < min_score:
            report.skip("below min_score")
        elif not s1 or not s2:
            report.skip("empty sentence")
        else:
            pair_id = f"{row[1]}-{row[2]}-{row[3]}"
            id1, id2 = f"{pair_id}/s1", f"{pair_id}/s2"
            for query, pos, qid, pid in ((s1, s2, id1, id2), (s2, s1, id2, id1)):
                extra = {"query_id": qid, "pos_ids": [pid], "pair_id": pair_id, "score": score}
                _emit(Record(query, [pos], [], "sts", dataset, instruction, extra), where, records, report)
    return records, report


# ------------------------------------------------------------------------ labels as documents


def humanize_label(label: str) -> str:
    """``card_arrival`` -> ``card arrival``: label names read better as documents."""
    return " ".join(label.replace("_", " ").split())


def _read_labelled(
    path: str | os.PathLike, text_field: str, label_field: str
) -> Iterator[tuple[str, str, str]]:
    """Yield (text, label, ``file:line``) from a CSV with a header row."""
    reader = csv.DictReader(line for _, line in text_lines(path))
    try:
        header = reader.fieldnames or []
    except csv.Error as e:
        raise RecordError(f"{path}:1: not a valid CSV header ({e})") from None
    missing = [n for n in (text_field, label_field) if n not in header]
    if missing:
        raise RecordError(f"{path}:1: header {header} lacks column(s) {missing}")
    for row in csv_rows(path, reader):
        where = f"{path}:{reader.line_num}"
        if row[text_field] is None or row[label_field] is None:
            raise RecordError(f"{where}: row has fewer columns than the header")
        yield row[text_field].strip(), row[label_field].strip(), where


LABELLED_FORMATS = ("labels", "examples")


def from_labelled(
    path: str | os.PathLike,
    dataset: str,
    instruction: str | None = None,
    task_type: str = "classification",
    text_field: str = "text",
    label_field: str = "category",
    label_text: Mapping[str, str] | None = None,
    n_neg: int | None = None,
    seed: int = 0,
    format: str = "labels",
) -> tuple[list[Record], PrepareReport]:
    """Labelled texts as own-negatives records (the loss scores only a record's own documents).

    ``format="labels"`` (labels as documents, the SFR recipe): pos = [its label], neg = the other
    labels. ``format="examples"`` (NV-Embed, 2024): pos = another example of its class, neg = one
    example of each other class; a row whose class has no other example (other text) is skipped
    and counted ("no other example of its class"); a file where every row is such is an error.
    With ``n_neg`` each record gets that many other classes (all of them if fewer). Every draw
    comes from one ``random.Random(seed)`` in file order, so the output is a pure function of the
    file and the seed. ``label_text`` maps raw labels to the text the model sees; by default
    underscores become spaces.
    """
    if task_type not in OWN_NEGATIVE_TASKS:
        raise ValueError(f"task_type must be one of {sorted(OWN_NEGATIVE_TASKS)}, got {task_type!r}")
    if n_neg is not None and n_neg < 0:
        raise ValueError(f"n_neg must be >= 0, got {n_neg}")
    if format not in LABELLED_FORMATS:
        raise ValueError(f"format must be one of {list(LABELLED_FORMATS)}, got {format!r}")
    instruction = instruction_for(dataset, instruction)
    report = PrepareReport(os.fspath(path))
    rows = list(_read_labelled(path, text_field, label_field))
    labels = sorted({label for _, label, _ in rows if label})
    rng = random.Random(seed)
    records: list[Record] = []
    if format == "examples":
        by_class: dict[str, list[str]] = {}
        for text, label, _ in rows:
            if text and label:
                by_class.setdefault(label, []).append(text)
        if not any(len(set(texts)) > 1 for texts in by_class.values()):
            raise ValueError("format examples needs a class with two examples of different text; none has")
        make = _example_maker(by_class, labels, n_neg, rng)
    else:
        make = _label_maker(_label_names(labels, label_text), labels, n_neg, rng)
    for text, label, where in rows:
        if not text:
            report.skip("empty text")
        elif not label:
            report.skip("empty label")
        elif (docs := make(text, label)) is None:
            report.skip("no other example of its class")
        else:
            pos, neg = docs
            record = Record(text, [pos], neg, task_type, dataset, instruction, {"label": label})
            _emit(record, where, records, report)
    return records, report


def _label_names(labels: list[str], label_text: Mapping[str, str] | None) -> dict[str, str]:
    if label_text is not None and (unmapped := [lb for lb in labels if lb not in label_text]):
        raise ValueError(f"label_text has no entry for label(s) {unmapped}")
    names = {lb: (label_text[lb] if label_text is not None else humanize_label(lb)) for lb in labels}
    if len(set(names.values())) < len(names):
        raise ValueError(
            "two labels map to the same text; a record's positive would also be one of its negatives"
        )
    return names


def _other_labels(labels: list[str], label: str, n_neg: int | None, rng: random.Random) -> list[str]:
    others = [lb for lb in labels if lb != label]
    return rng.sample(others, n_neg) if n_neg is not None and n_neg < len(others) else others


def _label_maker(names: dict[str, str], labels: list[str], n_neg: int | None, rng: random.Random):
    """(text, label) -> (its label's text, the other labels' texts)."""

    def make(text: str, label: str) -> tuple[str, list[str]]:
        return names[label], [names[lb] for lb in _other_labels(labels, label, n_neg, rng)]

    return make


def _example_maker(by_class: dict[str, list[str]], labels: list[str], n_neg: int | None, rng: random.Random):
    """(text, label) -> (another example of its class, one example of each other class drawn),
    or None when its class has no example with another text."""

    def make(text: str, label: str) -> tuple[str, list[str]] | None:
        same = [t for t in by_class[label] if t != text]
        if not same:
            return None
        pos = rng.choice(same)
        return pos, [rng.choice(by_class[lb]) for lb in _other_labels(labels, label, n_neg, rng)]

    return make
