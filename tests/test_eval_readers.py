"""Local task readers on the formats users bring: what is read, what is dropped and why (no model).

SemEval STS 2012-2016 and SICK files are written here in their published layouts (tab-separated,
gold scores line by line; SICK's header row); the expected pairs are written out by hand.
"""

import pytest

from sfr_ds.eval.readers import Tally, check_data, read_reranking, read_retrieval, read_sts
from sfr_ds.eval.specs import parse_local


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def sts(spec: str) -> tuple[list[tuple[str, str, float]], Tally]:
    tally = Tally()
    return read_sts(parse_local(spec), tally=tally), tally


@pytest.fixture
def semeval(tmp_path):
    """A SemEval year folder with two subsets; one gold line left blank (an unscored pair), one
    input line with the 2016 layout's source columns, a sentence with an unbalanced quote."""
    root = tmp_path / "STS2016"
    write(root / "STS.input.news.txt", 'A man "runs.\tA man is running.\nCats sleep.\tDogs bark.\n')
    write(root / "STS.gs.news.txt", "4.2\n0.4\n")
    write(root / "STS.input.forum.txt", "Yes.\tNo.\tsrc-1\tsrc-2\nHi there.\tHello there.\n")
    write(root / "STS.gs.forum.txt", "\n4.8\n")
    return root


def test_semeval_folder_pairs_every_subset_line_by_line(semeval):
    pairs, tally = sts(f"sts:{semeval}")
    assert sorted(pairs) == sorted(
        [
            ('A man "runs.', "A man is running.", 4.2),
            ("Cats sleep.", "Dogs bark.", 0.4),
            ("Hi there.", "Hello there.", 4.8),
        ]
    )
    assert tally.scored == 3 and tally.dropped == {"without a gold score in STS.gs.forum.txt": 1}
    assert tally.line("STS16") == (
        "STS16: 3 pairs scored, 1 dropped (1 without a gold score in STS.gs.forum.txt)"
    )


def test_semeval_one_subset_by_its_input_or_its_gold_file(semeval):
    by_input, _ = sts(f"sts:{semeval / 'STS.input.news.txt'}")
    by_gold, _ = sts(f"sts:{semeval / 'STS.gs.news.txt'}")
    assert (
        by_input
        == by_gold
        == [('A man "runs.', "A man is running.", 4.2), ("Cats sleep.", "Dogs bark.", 0.4)]
    )


SICK = (
    "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tentailment_AB\tentailment_BA\t"
    "sentence_A_original\tsentence_B_original\tsentence_A_dataset\tsentence_B_dataset\tSemEval_set\n"
    "1\tA boy plays.\tA kid plays.\tENTAILMENT\t4.5\tA_entails_B\tB_entails_A\tx\ty\tFLICKR\tFLICKR\tTRAIN\n"
    "2\tA dog runs.\tA cat sits.\tNEUTRAL\t1.2\tA_neutral_B\tB_neutral_A\tx\ty\tSEMEVAL\tSEMEVAL\tTEST\n"
    "3\tTwo men talk.\tMen talk.\tENTAILMENT\t4.9\tA_entails_B\tB_entails_A\tx\ty\tFLICKR\tFLICKR\tTEST\n"
)


def test_sick_reads_relatedness_and_its_semeval_split(tmp_path):
    path = write(tmp_path / "SICK.txt", SICK)
    every, tally = sts(f"sts:{path}")  # as MTEB's SICK-R: every pair
    assert every == [
        ("A boy plays.", "A kid plays.", 4.5),
        ("A dog runs.", "A cat sits.", 1.2),
        ("Two men talk.", "Men talk.", 4.9),
    ]
    assert tally.scored == 3 and not tally.dropped
    test, _ = sts(f"sts:{path}?split=test")
    assert test == every[1:]
    annotated = (
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n1\ta\tb\t3.6\tNEUTRAL\n"
    )
    pairs, _ = sts(f"sts:{write(tmp_path / 'SICK_test_annotated.txt', annotated)}")
    assert pairs == [("a", "b", 3.6)]


def test_retrieval_counts_queries_whose_qrels_id_matches_no_query(tmp_path):
    """The mistake that once scored 94 of 225 queries without a word: ids that differ by a prefix."""
    root = tmp_path / "beir"
    write(root / "corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n')
    write(root / "queries.jsonl", '{"_id": "q1", "text": "x"}\n{"_id": "q2", "text": "y"}\n')
    write(
        root / "qrels" / "test.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nQ2\td2\t2\nq3\td9\t1\nq2\td7\t0\n",
    )
    tally = Tally()
    data = read_retrieval(parse_local(f"retrieval:{root}"), tally=tally)
    assert data.relevant == {"q1": {"d1": 1}, "q2": {"d7": 0}}
    assert tally.scored == 2 and tally.dropped == {"with an id of test.tsv not in queries.jsonl": 2}
    assert tally.warnings == ["1 relevant document ids of test.tsv are not in corpus.jsonl"]
    assert check_data(f"retrieval:{root}").to_json() == tally.to_json()
    assert check_data(f"retrieval:{root}", head=True) is None  # a head read counts nothing


def test_reranking_counts_queries_without_a_positive(tmp_path):
    path = write(
        tmp_path / "r.jsonl",
        '{"query": "a", "positive": ["p"], "negative": ["n"]}\n'
        '{"query": "b", "positive": [], "negative": ["n"]}\n',
    )
    tally = Tally()
    read_reranking(parse_local(f"reranking:{path}"), tally=tally)
    assert (tally.unit, tally.scored, tally.dropped) == ("queries", 1, {"without a positive candidate": 1})
