"""Bad training data is refused with the file, the line and the field."""

import json

import pytest

from sfr_ds.data.load import load_records
from sfr_ds.data.records import RecordError, read_jsonl

GOOD = {
    "query": "q",
    "pos": ["p"],
    "neg": ["n"],
    "task_type": "retrieval",
    "dataset": "d",
    "instruction": "Retrieve",
}


def write(tmp_path, lines):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(line + "\n" for line in lines))
    return p


def test_good_file_loads(tmp_path):
    p = write(tmp_path, [json.dumps(GOOD), "", json.dumps(dict(GOOD, neg=[], query_id="7"))])
    recs = read_jsonl(p)
    assert len(recs) == 2 and recs[1].extra == {"query_id": "7"} and recs[0].loss_mode == "in_batch"


@pytest.mark.parametrize(
    "bad, where, what",
    [
        ('{"query": "q", "pos": ["p"]', 2, "not valid JSON"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "dataset"}), 2, "field 'dataset' is missing"),
        (json.dumps(dict(GOOD, pos=[])), 2, "field 'pos' is an empty list"),
        (json.dumps(dict(GOOD, task_type="retreival")), 2, "field 'task_type'"),
        (json.dumps(dict(GOOD, neg="n")), 2, "field 'neg' must be a list of strings"),
        (json.dumps(dict(GOOD, neg_ids=[1, 2])), 2, "field 'neg_ids' must be a list as long as 'neg'"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, bad, where, what):
    p = write(tmp_path, [json.dumps(GOOD), bad, json.dumps(GOOD)])
    with pytest.raises(RecordError) as e:
        read_jsonl(p)
    assert f"{p}:{where}:" in str(e.value) and what in str(e.value)


def test_all_problems_of_a_record_at_once(tmp_path):
    p = write(tmp_path, [json.dumps(dict(GOOD, query=" ", pos=[], task_type="x"))])
    with pytest.raises(RecordError) as caught:
        read_jsonl(p)
    msg = str(caught.value)
    assert "'query' is empty" in msg and "'pos' is an empty list" in msg and "'task_type'" in msg


def test_parquet_rows_are_checked_with_their_row_number(tmp_path):
    import datasets

    rows = [GOOD, dict(GOOD, pos=[])]
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(RecordError, match=rf"{path}:2: field 'pos' is an empty list"):
        load_records(str(path))
    datasets.Dataset.from_list([GOOD]).to_parquet(str(path))
    assert load_records(str(path))[0].query == "q"


@pytest.mark.integration
def test_training_stops_on_a_bad_line_naming_it(tmp_path):
    from conftest import TINY, sfr_ds

    p = write(tmp_path, [json.dumps(GOOD), json.dumps(dict(GOOD, pos=[]))])
    r = sfr_ds("train", TINY, f"data.train_files=[{p}]", "--output-dir", tmp_path / "run", check=False)
    assert r.returncode != 0
    assert f"{p}:2: field 'pos' is an empty list" in r.stderr
