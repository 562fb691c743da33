"""Build the small training bundle shipped in ``sfr_ds/resources/data`` from ../shared/data.

Run from the repository root:  python tools/build_bundled_data.py

Negatives come from the package's own miner (``sfr_ds.mining``: BM25 teacher, rank window,
positives removed by id and text, a per-query seeded draw), so the bundle looks like what
``mine`` produces. The output is a pure function of the source files and ``--seed``; rerunning
it must leave ``git diff`` empty.
"""

from __future__ import annotations

import argparse
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from sfr_ds.data.prepare import (  # noqa: E402
    PrepareReport,
    from_beir,
    from_labelled,
    from_sts,
    load_beir_corpus,
)
from sfr_ds.data.records import Record, write_jsonl  # noqa: E402
from sfr_ds.mining.bm25 import BM25Scorer  # noqa: E402
from sfr_ds.mining.select import retrieval_depth, select_negatives  # noqa: E402

COMMAND = "python tools/build_bundled_data.py"
N_NEG = 7
WINDOW = (30, 100)  # 0-based ranks after removing positives, upper bound exclusive
N_SCIFACT, N_STSB_PAIRS, N_BANKING, N_TINY, TINY_MIN_NEG = 400, 300, 600, 32, 3
# SciFact abstracts average 1,500 characters; eight per record would make the bundle ~5 MB,
# so stored documents are cut at a word boundary (after mining, which sees the full text).
# 500 characters (~100-130 tokens) keeps the whole bundle under 3 MB.
MAX_DOC_CHARS = 500


@dataclass
class Built:
    """One bundled file's records, the report on its whole source, the size of the pool its
    negatives come from, and how many source records were left out for lacking ``N_NEG``."""

    records: list[Record]
    report: PrepareReport
    pool: int
    few_negatives: int


def mine(
    records: list[Record],
    pool_texts: list[str],
    pool_ids: list[str],
    positives: list[set[int]],
    shown: list[str],
    seed: int,
) -> None:
    """Give each record up to ``N_NEG`` BM25 negatives from the rank window, with audit fields.

    ``positives`` are pool indices never to use for that record; ``shown`` is the pool text as
    stored, compared with the stored positives so no negative reads exactly like a positive.
    Zero-score candidates share no word with the query and sit in arbitrary order, so they are
    treated as absent rather than as hard negatives.
    """
    scores, ids = BM25Scorer(pool_texts).search(
        [r.query for r in records], retrieval_depth(WINDOW[1], positives)
    )
    picks, _ = select_negatives(
        np.where(scores > 0, ids, -1),
        scores,
        positives,
        shown,
        [r.pos for r in records],
        N_NEG,
        query_keys=[r.extra["query_id"] for r in records],
        range_min=WINDOW[0],
        range_max=WINDOW[1],
        seed=seed,
    )
    for rec, chosen in zip(records, picks):
        rec.neg = [shown[c["id"]] for c in chosen]
        rec.extra.update(
            neg_ids=[pool_ids[c["id"]] for c in chosen],
            neg_ranks=[c["rank"] for c in chosen],
            neg_scores=[round(float(c["score"]), 4) for c in chosen],
        )


def subset(items: list, n: int, seed: int) -> list:
    """A seeded sample of ``n`` items, kept in source order."""
    keep = sorted(random.Random(seed).sample(range(len(items)), min(n, len(items))))
    return [items[i] for i in keep]


def cut(text: str) -> str:
    """``text`` shortened to at most ``MAX_DOC_CHARS`` characters, ending on a whole word."""
    if len(text) <= MAX_DOC_CHARS:
        return text
    head = text[:MAX_DOC_CHARS]
    return head[: head.rfind(" ")] if " " in head else head


def build_scifact(data: Path, seed: int) -> Built:
    records, report = from_beir(data / "scifact", "train", "scifact")
    corpus = load_beir_corpus(data / "scifact" / "corpus.jsonl")
    ids, texts = list(corpus), list(corpus.values())
    index_of = {doc_id: i for i, doc_id in enumerate(ids)}
    for rec in records:
        rec.pos = [cut(p) for p in rec.pos]
    mine(
        records,
        texts,
        ids,
        [{index_of[d] for d in r.extra["pos_ids"]} for r in records],
        [cut(t) for t in texts],
        seed,
    )
    full = [r for r in records if len(r.neg) == N_NEG]
    return Built(subset(full, N_SCIFACT, seed), report, len(texts), len(records) - len(full))


def build_stsb(data: Path, seed: int) -> Built:
    path = data / "stsbenchmark" / "sts-train.csv"
    records, report = from_sts(path, "stsb")
    # The pool is every sentence of sts-train whatever its pair's score; a sentence found in
    # several pairs is one entry (first id), never a negative for any of those pairs.
    pairs_of: dict[str, set[str]] = {}
    first_id: dict[str, str] = {}
    for r in from_sts(path, "stsb", min_score=float("-inf"))[0]:
        pairs_of.setdefault(r.query, set()).add(r.extra["pair_id"])
        first_id.setdefault(r.query, r.extra["query_id"])
    texts = list(first_id)
    in_pair: dict[str, set[int]] = {}
    for i, text in enumerate(texts):
        for pair in pairs_of[text]:
            in_pair.setdefault(pair, set()).add(i)
    mine(
        records,
        texts,
        [first_id[t] for t in texts],
        [in_pair[r.extra["pair_id"]] for r in records],
        texts,
        seed,
    )
    # Keep pairs whole: both directions need the full set of negatives.
    short = {r.extra["pair_id"] for r in records if len(r.neg) < N_NEG}
    wanted = set(subset(sorted({r.extra["pair_id"] for r in records} - short), N_STSB_PAIRS, seed))
    return Built(
        [r for r in records if r.extra["pair_id"] in wanted],
        report,
        len(texts),
        sum(r.extra["pair_id"] in short for r in records),
    )


def build_banking77(data: Path, seed: int) -> Built:
    records, report = from_labelled(data / "banking77" / "train.csv", "banking77", n_neg=N_NEG, seed=seed)
    return Built(subset(records, N_BANKING, seed), report, len({r.pos[0] for r in records}), 0)


def build_tiny(bundles: list[list[Record]], seed: int) -> list[Record]:
    """``N_TINY`` records from each bundle, each with at least ``TINY_MIN_NEG`` negatives."""
    return [
        r
        for records in bundles
        for r in subset([r for r in records if len(r.neg) >= TINY_MIN_NEG], N_TINY, seed)
    ]


PROVENANCE = """\
# Bundled training data

Small, deterministic subsets of public data, for the README's first training command and for
tests. Built by `{command}` (seed {seed}) from `../shared/data/` (the
folder beside the repository); rerunning it reproduces these files byte for byte. Each line is a
training record (see `sfr_ds/data/records.py`).

Hard negatives: BM25 (bm25s, English stop words, no stemming) over the pool named below, through
`sfr_ds.mining` (`BM25Scorer`, `select_negatives`): positives are removed by id and by identical
text, then candidates ranked {lo}-{hi_1} (0-based rank after that removal, `neg_ranks`) with a BM25
score > 0 form the window, and {n_neg} are drawn per query with seed {seed} keyed by `query_id`,
stored in rank order with `neg_ids`, `neg_ranks` and `neg_scores`. Records that end up with fewer
than {n_neg} negatives are left out before sampling, so every record has exactly {n_neg} (a fixed
group size per query).

| file | records | bytes | task type | source |
|---|---|---|---|---|
{table}

## scifact_train.jsonl

{scifact_n} of the {scifact_all} SciFact train queries (`scifact/qrels/train.tsv`, relevance > 0).
Query = claim, positives = judged abstracts as `title + " " + text`, negatives mined over the
whole {scifact_pool}-document `scifact/corpus.jsonl`. Documents (positives and negatives) are cut
to at most {max_chars} characters (~100-130 tokens) at a word boundary *after* mining, to keep
the bundle under 3 MB (the full abstracts, ~1,500 characters on average, would make it ~5 MB);
`sfr_ds.data.prepare.from_beir` on the source gives the full texts.
{scifact_few} queries had fewer than {n_neg} usable negatives and were left out before sampling.
Source report: `{scifact_report}`.

Source: SciFact (Wadden et al., 2020) in BEIR format (Thakur et al., 2021), same content as BEIR
"scifact" / MTEB SciFact; corpus and claims from a CSV export of the Hugging Face
`allenai/scifact` dataset, qrels = the BEIR qrels; format conversion only (see
`../shared/data/scifact/PROVENANCE.txt`).
Licence: claims and evidence annotations CC BY 4.0; abstracts (S2ORC) ODC-By 1.0
(allenai/scifact LICENSE.md). Some BEIR / Hugging Face cards list SciFact as CC BY-NC 2.0.

## stsb_train.jsonl

Both directions (s1 -> s2 and s2 -> s1) of {stsb_pairs} pairs drawn from the {stsb_all} pairs of
`stsbenchmark/sts-train.csv` with gold score >= 4.0. Negatives are sentences of other pairs,
mined over all {stsb_pool} distinct sentences of sts-train.csv; a sentence that also occurs in
the query's own pair is never a negative. {stsb_few_pairs} pairs where a direction had fewer than
{n_neg} usable negatives were left out whole ({stsb_few} records) before sampling.
Source report: `{stsb_report}`.

Source: STS Benchmark (Cer et al., 2017), SemEval 2012-2017 selection; unmodified copy of the
original distribution (see `../shared/data/stsbenchmark/PROVENANCE.txt`).
Licence: scores CC BY-SA 4.0; sentence texts keep the licence of each sub-dataset
(MSR-Paraphrase and MSR-Video: Microsoft Research terms; headlines: EMM; images: PASCAL VOC
captions CC BY-SA; SNLI CC BY-SA 4.0; Stack Exchange CC BY-SA 3.0). Full text in
`LICENSE-stsbenchmark.txt`.

## banking77_train.jsonl

{banking_n} of the {banking_all} rows of `banking77/train.csv` as labels-as-documents
classification records: query = customer message, pos = its intent as text (`card_arrival` ->
`card arrival`), neg = {n_neg} of the other {n_other} intents drawn with `random.Random({seed})`
in file order.
Source report: `{banking_report}`.

Source: BANKING77 (Casanueva et al., 2020), PolyAI-LDN/task-specific-datasets, unmodified (see
`../shared/data/banking77/PROVENANCE.txt`). Licence: CC BY 4.0, full text in
`LICENSE-banking77`.

## tiny.jsonl

For fast tests: {n_tiny} records from each of the three files above (seed {seed}, only records
with at least {tiny_min} negatives), in that order; same sources and licences.

No WikiQA data is bundled (its licence is non-commercial).
"""


def write_provenance(out: Path, seed: int, built: dict[str, Built], tiny: list[Record]) -> None:
    sources = {
        "scifact_train.jsonl": "scifact/corpus.jsonl, queries.jsonl, qrels/train.tsv",
        "stsb_train.jsonl": "stsbenchmark/sts-train.csv",
        "banking77_train.jsonl": "banking77/train.csv",
    }
    rows = [(name, b.records, b.records[0].task_type, sources[name]) for name, b in built.items()]
    rows.append(("tiny.jsonl", tiny, "retrieval, sts, classification", "the three above"))
    table = "\n".join(
        f"| {name} | {len(recs)} | {(out / name).stat().st_size:,} | {task} | {src} |"
        for name, recs, task, src in rows
    )
    sci, sts, bank = (built[n] for n in sources)
    text = PROVENANCE.format(
        command=COMMAND,
        seed=seed,
        lo=WINDOW[0],
        hi_1=WINDOW[1] - 1,
        n_neg=N_NEG,
        table=table,
        scifact_n=len(sci.records),
        scifact_all=sci.report.written,
        scifact_report=sci.report,
        scifact_pool=f"{sci.pool:,}",
        max_chars=MAX_DOC_CHARS,
        stsb_pairs=len(sts.records) // 2,
        stsb_all=sts.report.written // 2,
        scifact_few=sci.few_negatives,
        stsb_report=sts.report,
        stsb_pool=f"{sts.pool:,}",
        stsb_few=sts.few_negatives,
        stsb_few_pairs=sts.few_negatives // 2,
        banking_n=len(bank.records),
        banking_all=bank.report.written,
        banking_report=bank.report,
        n_other=bank.pool - 1,
        n_tiny=N_TINY,
        tiny_min=TINY_MIN_NEG,
    )
    # Reports name absolute source paths; write them relative to the repository's parent.
    (out / "PROVENANCE.md").write_text(text.replace(str(ROOT.parent) + "/", "../"), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "sfr_ds" / "resources" / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    built = {
        "scifact_train.jsonl": build_scifact(args.data, args.seed),
        "stsb_train.jsonl": build_stsb(args.data, args.seed),
        "banking77_train.jsonl": build_banking77(args.data, args.seed),
    }
    tiny = build_tiny([b.records for b in built.values()], args.seed)
    for name, records in [*((n, b.records) for n, b in built.items()), ("tiny.jsonl", tiny)]:
        write_jsonl(records, args.out / name)
        print(f"{name}: {len(records)} records, {(args.out / name).stat().st_size:,} bytes")
    shutil.copyfile(args.data / "banking77" / "LICENSE", args.out / "LICENSE-banking77")
    shutil.copyfile(args.data / "stsbenchmark" / "LICENSE.txt", args.out / "LICENSE-stsbenchmark.txt")
    write_provenance(args.out, args.seed, built, tiny)


if __name__ == "__main__":
    main()
