"""Build the small held-out evaluation bundle in ``sfr_ds/resources/data/eval`` from ../shared/data.

Run from the repository root:  python tools/build_eval_data.py

The ``mini`` suite (``sfr-ds eval --suite mini``, the demo and the ablations) reads these files:
one task per group of the seed's dev table plus Banking77 classification, small enough that an
untrained 135M decoder is evaluated on 2 CPU cores in about two minutes. No text here occurs in
the training bundle (``sfr_ds/resources/data/*_train.jsonl``): SciFact test claims whose judged
abstracts the bundle never uses (as positive or negative) over abstracts it never uses, STS-B test
pairs whose sentences it never uses, Banking77 texts it does not contain, PubMedQA (not trained on).
SciFact's train and test claims share one corpus, so without that filter 45 of the judged abstracts
were positives of training records. The output is a pure function of the sources and ``--seed``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from sfr_ds.data.prepare import load_beir_corpus  # noqa: E402
from sfr_ds.data.records import read_jsonl  # noqa: E402
from sfr_ds.mining.bm25 import BM25Scorer  # noqa: E402

COMMAND = "python tools/build_eval_data.py"
MAX_DOC_CHARS = 500  # as the training bundle: ~100-130 tokens
# Sized by tokens: SmolLM2-135M reads ~500 tokens/s in fp32 on 2 cores, and the demo evaluates
# twice within its 15 minutes, so the mini suite is ~50k tokens (~100 s).
N_SCIFACT_QUERIES, N_SCIFACT_DOCS = 100, 200  # at most: 97 test claims are clean (see above)
N_PUBMEDQA, N_CANDIDATES = 60, 10
N_STS_PAIRS = 200
# Clustering: V-measure rewards many tiny clusters even for random embeddings (77 intents x 5
# texts scores ~0.97 untrained), so fewer intents with more texts each.
N_CLUSTER_INTENTS, CLUSTER_PER_INTENT = 20, 15
BANKING_TEST_PER_LABEL, BANKING_TRAIN_PER_LABEL = 5, 10


def cut(text: str) -> str:
    """``text`` shortened to at most ``MAX_DOC_CHARS`` characters, ending on a whole word."""
    if len(text) <= MAX_DOC_CHARS:
        return text
    head = text[:MAX_DOC_CHARS]
    return head[: head.rfind(" ")] if " " in head else head


def bundle_texts(name: str) -> tuple[set[str], set[str]]:
    """Every text of a bundled training file (queries, positives, negatives) and every doc id."""
    texts, ids = set(), set()
    for r in read_jsonl(ROOT / "sfr_ds" / "resources" / "data" / f"{name}_train.jsonl"):
        texts.update([r.query, *r.pos, *r.neg])
        ids.update(map(str, [*r.extra.get("pos_ids", []), *r.extra.get("neg_ids", [])]))
    return texts, ids


def sample(items: list, n: int, seed: int) -> list:
    """A seeded sample of ``n`` items, kept in source order."""
    keep = sorted(random.Random(seed).sample(range(len(items)), min(n, len(items))))
    return [items[i] for i in keep]


def build_scifact(src: Path, out: Path, seed: int) -> str:
    """Up to 100 test claims none of whose judged abstracts the training bundle uses; corpus = their
    judged abstracts + BM25's best other abstracts the bundle does not use, to 200."""
    used_texts, used_ids = bundle_texts("scifact")
    qrels: dict[str, list[str]] = {}
    with open(src / "qrels" / "test.tsv", encoding="utf-8") as f:
        for row in list(csv.reader(f, delimiter="\t"))[1:]:
            if int(row[2]) > 0:
                qrels.setdefault(row[0], []).append(row[1])
    queries = {}
    for line in open(src / "queries.jsonl", encoding="utf-8"):
        obj = json.loads(line)
        queries[str(obj["_id"])] = obj["text"]
    corpus = load_beir_corpus(src / "corpus.jsonl")
    unused = {d for d, text in corpus.items() if d not in used_ids and text not in used_texts}
    clean = [q for q in sorted(qrels, key=int) if all(d in unused for d in qrels[q])]
    qids = sample(clean, N_SCIFACT_QUERIES, seed)
    ids, texts = list(corpus), list(corpus.values())
    keep = list(dict.fromkeys(d for q in qids for d in qrels[q]))
    _, top = BM25Scorer(texts).search([queries[q] for q in qids], 50)
    for depth in range(top.shape[1]):  # round robin over queries: each gets its hardest first
        for row in top[:, depth]:
            if len(keep) < N_SCIFACT_DOCS and ids[row] in unused and ids[row] not in keep:
                keep.append(ids[row])
    keep = sorted(keep, key=ids.index)
    (out / "scifact" / "qrels").mkdir(parents=True)
    with open(out / "scifact" / "corpus.jsonl", "w", encoding="utf-8") as f:
        for d in keep:  # the title is already the head of the text (load_beir_corpus)
            f.write(json.dumps({"_id": d, "title": "", "text": cut(corpus[d])}) + "\n")
    with open(out / "scifact" / "queries.jsonl", "w", encoding="utf-8") as f:
        for q in qids:
            f.write(json.dumps({"_id": q, "text": queries[q]}) + "\n")
    with open(out / "scifact" / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t1\n" for q in qids for d in qrels[q])
    n_rel = sum(len(qrels[q]) for q in qids)
    return (
        f"{len(qids)} of {len(qrels)} test claims ({n_rel} judgements; the {len(clean)} whose "
        f"judged abstracts the training bundle never uses), corpus {len(keep)} of {len(ids)} "
        f"abstracts: the judged ones plus BM25's highest-ranked others among the "
        f"{len(unused)} the bundle never uses"
    )


def build_pubmedqa(src: Path, out: Path, seed: int) -> str:
    """``N_PUBMEDQA`` PQA-L test questions, each reranking its own abstract among the closest
    (BM25) abstracts of the others: one pool of documents, so each is encoded once."""
    data = json.loads((src / "ori_pqal.json").read_text())
    test = json.loads((src / "test_ground_truth.json").read_text())
    pmids = sample(sorted(p for p in data if p in test), N_PUBMEDQA, seed)
    questions = [data[p]["QUESTION"] for p in pmids]
    docs = [cut(" ".join(data[p]["CONTEXTS"])) for p in pmids]
    scores, top = BM25Scorer(docs).search(questions, N_CANDIDATES + 1)
    (out / "pubmedqa").mkdir()
    with open(out / "pubmedqa" / "rerank.jsonl", "w", encoding="utf-8") as f:
        for i, question in enumerate(questions):
            others = [int(j) for j in top[i] if j != i][: N_CANDIDATES - 1]
            f.write(
                json.dumps(
                    {
                        "query": question,
                        "positive": [docs[i]],
                        "negative": [docs[j] for j in others],
                        "pmid": pmids[i],
                    }
                )
                + "\n"
            )
    shutil.copy(src / "LICENSE", out / "LICENSE-pubmedqa")
    return (
        f"{len(pmids)} of the {len(test)} PQA-L test questions; candidates = the question's own "
        f"abstract + the {N_CANDIDATES - 1} other abstracts of the pool BM25 scores highest"
    )


def build_stsb(src: Path, out: Path, seed: int) -> str:
    used, _ = bundle_texts("stsb")
    lines = (src / "sts-test.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    clean = [line for line in lines if not set(line.rstrip("\n").split("\t")[5:7]) & used]
    chosen = sample(clean, N_STS_PAIRS, seed)
    (out / "stsbenchmark").mkdir()
    (out / "stsbenchmark" / "sts-test.csv").write_text("".join(chosen), encoding="utf-8")
    return (
        f"{len(chosen)} of the {len(clean)} sts-test.csv pairs (of {len(lines)}) neither of whose "
        f"sentences the training bundle uses, lines unmodified"
    )


def build_banking77(src: Path, out: Path, seed: int) -> str:
    """Clustering: 15 test rows of each of 20 intents. Classification: per intent, 5 test rows and
    10 train rows (for the classifier) the training bundle does not contain."""
    used, _ = bundle_texts("banking77")

    def per_label(path: Path, n: int, exclude: set[str]) -> list[dict]:
        rows = [r for r in csv.DictReader(open(path, encoding="utf-8")) if r["text"] not in exclude]
        by_label: dict[str, list[dict]] = {}
        for r in rows:
            by_label.setdefault(r["category"], []).append(r)
        return [r for label in sorted(by_label) for r in sample(by_label[label], n, seed)]

    (out / "banking77").mkdir()
    parts = {
        "test": per_label(src / "test.csv", BANKING_TEST_PER_LABEL, used),
        "train": per_label(src / "train.csv", BANKING_TRAIN_PER_LABEL, used),
    }
    intents = set(sample(sorted({r["category"] for r in parts["test"]}), N_CLUSTER_INTENTS, seed))
    parts["clustering"] = [
        r for r in per_label(src / "test.csv", CLUSTER_PER_INTENT, used) if r["category"] in intents
    ]
    for split, rows in parts.items():
        with open(out / "banking77" / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, ["text", "category"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return (
        f"clustering.csv: {len(parts['clustering'])} rows of test.csv ({CLUSTER_PER_INTENT} of "
        f"each of {N_CLUSTER_INTENTS} intents); "
        f"test: {len(parts['test'])} rows ({BANKING_TEST_PER_LABEL} per intent) of test.csv; "
        f"train (the classifier's): {len(parts['train'])} rows ({BANKING_TRAIN_PER_LABEL} per "
        f"intent) of train.csv, none of them in banking77_train.jsonl"
    )


PROVENANCE = """\
# Bundled evaluation data (the `mini` suite)

Held-out subsets of public data for `sfr-ds eval --suite mini`, `sfr-ds demo` and `sfr-ds ablate`:
one task per group of the seed's dev table (Clustering, Reranking, Retrieval, STS) plus Banking77
classification, sized so that SmolLM2-135M is evaluated on 2 CPU cores in a few minutes. Scores on
these subsets are not comparable with published MTEB scores (smaller corpora, shorter documents);
they compare models with each other. Built by `{command}` (seed {seed}) from `../shared/data/`;
rerunning it reproduces these files byte for byte. Documents are cut to at most {chars} characters at
a word boundary. No text of it occurs in the training bundle (`../*_train.jsonl`); Banking77's
intent names are the labels-as-documents of both, by design.

| folder | task (group) | content | source and licence |
|---|---|---|---|
| scifact/ | SciFact-mini retrieval (Retrieval_dev), nDCG@10 | {scifact} | SciFact (Wadden et al., 2020), BEIR format; claims CC BY 4.0, abstracts ODC-By 1.0 |
| pubmedqa/ | PubMedQA-mini reranking (Reranking_dev), MAP | {pubmedqa} | PubMedQA PQA-L (Jin et al., 2019), MIT (`LICENSE-pubmedqa`) |
| stsbenchmark/ | STSBenchmark-mini (STS_dev), Spearman | {stsb} | STS Benchmark (Cer et al., 2017); CC BY-SA 4.0 scores, texts per sub-dataset (`../LICENSE-stsbenchmark.txt`) |
| banking77/ | Banking77Clustering-mini (Clustering_dev, clustering.csv), V-measure; Banking77Classification-mini (train.csv + test.csv, not in the suite), accuracy | {banking} | BANKING77 (Casanueva et al., 2020), CC BY 4.0 (`../LICENSE-banking77`) |

No WikiQA data is bundled (its licence is non-commercial); the seed's Reranking_dev group is
represented by PubMedQA here.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "sfr_ds" / "resources" / "data" / "eval")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    np.random.seed(args.seed)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    notes = {
        "scifact": build_scifact(args.data / "scifact", args.out, args.seed),
        "pubmedqa": build_pubmedqa(args.data / "pubmedqa_pqal", args.out, args.seed),
        "stsb": build_stsb(args.data / "stsbenchmark", args.out, args.seed),
        "banking": build_banking77(args.data / "banking77", args.out, args.seed),
    }
    (args.out / "PROVENANCE.md").write_text(
        PROVENANCE.format(command=COMMAND, seed=args.seed, chars=MAX_DOC_CHARS, **notes)
    )
    for name, note in notes.items():
        print(f"{name}: {note}")


if __name__ == "__main__":
    main()
