"""Training records memory-mapped from an Arrow copy (sfr_ds/data/arrow_store.py) against the
in-memory JSONL path they replace: the same records, plan, negatives and batches; a cache that is
reused, re-made when its source changes, never taken as complete after a kill, and made once when
two processes want it at the same time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, proc_env, untimed_metrics
from safetensors.torch import load_file

from sfr_ds.data import arrow_store, records
from sfr_ds.data.arrow_store import open_training_data
from sfr_ds.data.batch import NegativeDrawer, build_text_batch
from sfr_ds.data.load import group_by_dataset, load_training_data
from sfr_ds.data.records import RecordError, read_jsonl, write_jsonl
from sfr_ds.data.sampler import BatchPlan

DATA = ROOT / "sfr_ds" / "resources" / "data"


def short_negatives_file(path: Path) -> Path:
    """Bundled records with 0, 1 or 2 negatives left (the draw's fallbacks) and a second dataset
    name, written as JSONL: a second file for the multi-file cases."""
    rows = [r.to_json() for r in read_jsonl(DATA / "scifact_train.jsonl")[:120]]
    for i, r in enumerate(rows):
        r["neg"], r["dataset"] = r["neg"][: i % 3], f"scifact{i % 2}"
        for key in ("neg_ids", "neg_scores", "neg_ranks"):
            if key in r:
                r[key] = r[key][: i % 3]
    write_jsonl(rows, path)
    return path


@pytest.fixture
def files(tmp_path):
    return [
        DATA / "tiny.jsonl",
        DATA / "banking77_train.jsonl",
        short_negatives_file(tmp_path / "short.jsonl"),
    ]


def reference_drawer(recs, k):
    """The negatives' draw state as it was computed before the Arrow path: a loop over records."""
    pools = {}
    for i, r in enumerate(recs):
        pools.setdefault(r.dataset, []).append(i)
    short = [i for i, r in enumerate(recs) if len(r.neg) < k]
    return pools, len(short), sum(1 for i in short if not recs[i].neg)


@pytest.mark.parametrize("cap", [None, 40])
def test_arrow_records_plan_and_batches_equal_the_in_memory_path(files, tmp_path, cap):
    files = [str(f) for f in files]
    mapped = open_training_data(files, cap, tmp_path / "cache")
    parsed = load_training_data(files, cap)
    assert len(mapped) == len(parsed) > 0
    assert list(mapped) == parsed  # every field, ids and scores included
    assert [r.where for r in mapped] == [r.where for r in parsed]
    assert mapped[-1] == parsed[-1] and mapped[3:7] == parsed[3:7]
    groups = group_by_dataset(mapped)
    assert {k: list(v) for k, v in groups.items()} == group_by_dataset(parsed)
    for policy in ("repeat", "random"):
        k = 5  # more than the short file's records hold: every fallback of the draw is used
        a, b = NegativeDrawer(mapped, k, policy, 7), NegativeDrawer(parsed, k, policy, 7)
        pools, n_short, n_empty = reference_drawer(parsed, k)
        assert {n: list(v) for n, v in a.pools.items()} == pools
        assert (a.n_short, a.n_empty) == (b.n_short, b.n_empty) == (n_short, n_empty) and n_empty > 0
        plan, ids = BatchPlan(groups, 8, homogeneous=True, seed=3), set()
        for step in range(2 * plan.steps_per_epoch):
            gb = plan.batch(step)
            x = build_text_batch(mapped, gb.indices, gb.epoch, a)
            y = build_text_batch(parsed, gb.indices, gb.epoch, b)
            assert (x.queries, x.docs, x.doc_ids, x.datasets) == (y.queries, y.docs, y.doc_ids, y.datasets)
            assert np.array_equal(x.own_only, y.own_only)
            ids.update(i for i in x.doc_ids if i is not None)
        assert ids  # the records' document ids reach the batches


def test_the_cache_is_reused_rehashed_on_a_new_stat_and_remade_on_new_content(tmp_path, monkeypatch):
    src = tmp_path / "train.jsonl"
    write_jsonl(read_jsonl(DATA / "tiny.jsonl"), src)
    cache = tmp_path / "cache"
    hashed = []
    real_hash = arrow_store._file_sha256
    monkeypatch.setattr(arrow_store, "_file_sha256", lambda p: hashed.append(p) or real_hash(p))

    first = open_training_data([str(src)], None, cache)
    assert first.parts[0].converted_s is not None and len(hashed) == 1
    second = open_training_data([str(src)], None, cache)  # the stat matches: not even hashed
    assert second.parts[0].converted_s is None and len(hashed) == 1
    assert second.parts[0].entry == first.parts[0].entry

    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, unchanged: re-hashed only
    third = open_training_data([str(src)], None, cache)
    assert third.parts[0].converted_s is None and len(hashed) == 2

    write_jsonl(read_jsonl(DATA / "tiny.jsonl")[:50], src)  # new content: converted again
    fourth = open_training_data([str(src)], None, cache)
    assert fourth.parts[0].converted_s is not None and fourth.parts[0].entry != first.parts[0].entry
    assert list(fourth) == read_jsonl(src)
    assert list(first) == read_jsonl(DATA / "tiny.jsonl")  # the old entry, still mapped, still whole
    assert not list((cache / "tmp").iterdir())


def test_a_bad_record_is_the_same_file_line_error_and_leaves_nothing(tmp_path):
    good = read_jsonl(DATA / "tiny.jsonl")[0].to_json()
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, task_type="retreival")) + "\n")
    with pytest.raises(RecordError) as expected:
        read_jsonl(src)
    for _ in range(2):  # the lock was released: a second try meets the same error, not a hang
        with pytest.raises(RecordError) as got:
            open_training_data([str(src)], None, tmp_path / "cache")
        assert str(got.value) == str(expected.value) and f"{src}:2: field 'task_type'" in str(got.value)
    assert not list((tmp_path / "cache" / "entries").glob("*"))
    assert not list((tmp_path / "cache" / "tmp").glob("*"))


def test_unknown_keys_warn_as_the_in_memory_path_does(tmp_path, capsys, monkeypatch):
    good = read_jsonl(DATA / "tiny.jsonl")[0].to_json()
    src = tmp_path / "train.jsonl"
    write_jsonl([good, dict(good, pos_idz=["x"]), dict(good, colour="red")], src)
    read_jsonl(src)
    expected = capsys.readouterr().err
    monkeypatch.setattr(records, "_WARNED", set())
    open_training_data([str(src)], None, tmp_path / "cache")
    assert capsys.readouterr().err == expected and "2 record(s)" in expected
    monkeypatch.setattr(records, "_WARNED", set())
    open_training_data([str(src)], None, tmp_path / "cache")  # from the cache: the same warning
    assert capsys.readouterr().err == expected


OPEN = (
    "import json, sys, time\n"
    "t = float(sys.argv[3])\n"
    "from sfr_ds.data.arrow_store import open_training_data\n"
    "time.sleep(max(0.0, t - time.time()))\n"
    "t0 = time.time()\n"
    "r = open_training_data([sys.argv[1]], None, sys.argv[2])\n"
    "print(json.dumps({'converted': r.parts[0].converted_s is not None, 'waited': time.time() - t0,"
    " 'records': [x.to_json() for x in r]}))\n"
)


def opener(src, cache, at: float = 0.0, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", OPEN, str(src), str(cache), str(at)],
        cwd=ROOT,
        env=dict(proc_env(), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_kill_mid_conversion_leaves_no_entry_taken_as_complete(tmp_path):
    src, cache = tmp_path / "train.jsonl", tmp_path / "cache"
    write_jsonl(read_jsonl(DATA / "banking77_train.jsonl"), src)
    p = opener(src, cache, **{arrow_store.KILL_AFTER_ROWS_ENV: "300"})
    assert p.wait(timeout=120) == -9, p.stderr.read()
    left = list((cache / "tmp").iterdir())
    assert len(left) == 1 and (left[0] / "records.arrow").stat().st_size > 0  # rows were written
    assert not (left[0] / "manifest.json").exists()
    assert not any(arrow_store._complete(e) for e in (cache / "entries").glob("*"))

    again = open_training_data([str(src)], None, cache)  # converts anew, removes the leftover
    assert again.parts[0].converted_s is not None
    assert list(again) == read_jsonl(src) and len(again) == 600
    assert not list((cache / "tmp").iterdir())


def test_two_processes_wanting_the_same_file_convert_it_once(tmp_path):
    src, cache = tmp_path / "train.jsonl", tmp_path / "cache"
    write_jsonl(read_jsonl(DATA / "banking77_train.jsonl"), src)
    at = time.time() + 2  # both past their imports (~0.5 s), then both at once
    delay = {arrow_store.ROW_DELAY_ENV: "0.002"}  # a conversion of ~1.2 s: the other one waits
    procs = [opener(src, cache, at, **delay), opener(src, cache, at, **delay)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.splitlines()[-1]))
    assert sorted(o["converted"] for o in out) == [False, True]
    waiter = next(o for o in out if not o["converted"])
    assert waiter["waited"] > 0.5  # it arrived while the other converted, and waited on the lock
    reference = [r.to_json() for r in read_jsonl(src)]
    assert out[0]["records"] == out[1]["records"] == reference
    assert len(list((cache / "entries").iterdir())) == 1 and not list((cache / "tmp").iterdir())


def test_the_arrow_file_opens_with_datasets(tmp_path):
    """The copy is the ``datasets`` library's own format: a user can inspect it with it."""
    datasets = pytest.importorskip("datasets")
    r = open_training_data([str(DATA / "tiny.jsonl")], None, tmp_path / "cache")
    ds = datasets.Dataset.from_file(str(r.parts[0].entry / "records.arrow"))
    assert ds.num_rows == len(r) and ds[5]["query"] == r[5].query and ds[5]["neg"] == r[5].neg


TRAIN_BOTH = (
    "import sys\n"
    "from sfr_ds.config import load_config\n"
    "from sfr_ds.train import train\n"
    "for name in ('mapped', 'parsed'):\n"
    "    over = [f'data.memory_map={name == \"mapped\"}', f'run.output_dir={sys.argv[2]}/{name}']\n"
    "    print('run', name, flush=True)\n"
    "    train(load_config(sys.argv[1], over))\n"
)


@pytest.mark.integration
def test_training_on_the_arrow_path_is_bit_identical_to_the_in_memory_path(tmp_path):
    """The tiny config, 6 steps, on one rank: the same metrics and the same adapter, bit for bit
    (both runs in one process, to pay the imports once)."""
    env = dict(proc_env(), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    p = subprocess.run(
        [sys.executable, "-c", TRAIN_BOTH, str(TINY), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    mapped_log, parsed_log = p.stdout.split("run parsed")
    assert "via cache" in mapped_log and "via cache" not in parsed_log, p.stdout
    assert untimed_metrics(tmp_path / "mapped") == untimed_metrics(tmp_path / "parsed")
    a = load_file(tmp_path / "mapped" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "parsed" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(bool(a[k].abs().sum()) for k in a)


# --- other libraries' formats, read as they are ------------------------------------------------


def test_flagembedding_jsonl_reads_as_the_same_records_in_sfr_ds_form(tmp_path):
    flag = [
        {"query": "q1", "pos": ["p1"], "neg": ["n1", "n2"], "pos_scores": [0.9], "neg_scores": [0.2, 0.1]},
        {"query": "q2", "pos": ["p2"], "neg": [], "prompt": "Find the answer", "type": "normal"},
        {"query": "q3", "pos": ["label a"], "neg": ["label b"], "type": "symmetric_class"},
        {"query": "q4", "pos": ["p4"], "type": "symmetric_clustering"},
    ]
    src = tmp_path / "flag.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in flag))
    base = {"dataset": "msm", "instruction": "Retrieve passages"}
    expected = [  # written by hand: prompt -> instruction, type -> task type, pos_scores dropped
        dict(base, query="q1", pos=["p1"], neg=["n1", "n2"], task_type="retrieval", neg_scores=[0.2, 0.1]),
        dict(base, query="q2", pos=["p2"], neg=[], task_type="retrieval", instruction="Find the answer"),
        dict(base, query="q3", pos=["label a"], neg=["label b"], task_type="classification"),
        dict(base, query="q4", pos=["p4"], neg=[], task_type="clustering"),
    ]
    ref = tmp_path / "ref.jsonl"
    write_jsonl(expected, ref)
    spec = {"flag.jsonl": {"format": "flagembedding", "instruction": "Retrieve passages", "dataset": "msm"}}
    got = open_training_data([str(src)], None, tmp_path / "cache", spec)
    assert list(got) == read_jsonl(ref)
    assert got[2].loss_mode == "own_negatives"
    with pytest.raises(RecordError, match=f"{src}:1: field 'task_type' is missing"):
        open_training_data([str(src)], None, tmp_path / "cache")  # the same file as sfr-ds records


def test_sentence_transformers_columns_and_triplets_read_as_sfr_ds_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    named = tmp_path / "named.parquet"
    table = {
        "anchor": ["a1", "a2"],
        "positive": ["p1", "p2"],
        "negative_2": ["m1", "m2"],
        "negative_1": ["n1", "n2"],
    }
    pq.write_table(pa.table(table), named)
    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text('{"question": "a3", "answer": "p3", "wrong": "n3"}\n')
    spec = {"format": "sentence-transformers", "task_type": "sts", "instruction": "Same meaning"}
    got = open_training_data(
        [str(named), str(triplets)], None, tmp_path / "cache", {"named.parquet": spec, "triplets.jsonl": spec}
    )
    base = {"task_type": "sts", "instruction": "Same meaning"}
    expected = [  # by hand: anchor -> query, positive -> [pos], negative_1..n in their number's order
        dict(base, query="a1", pos=["p1"], neg=["n1", "m1"], dataset="named"),
        dict(base, query="a2", pos=["p2"], neg=["n2", "m2"], dataset="named"),
        dict(base, query="a3", pos=["p3"], neg=["n3"], dataset="triplets"),
    ]
    ref = tmp_path / "ref.jsonl"
    write_jsonl(expected, ref)
    assert list(got) == read_jsonl(ref)

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"anchor": "a", "positive": "p"}\n{"sentence1": "a", "sentence2": "b", "score": 0.5}\n')
    with pytest.raises(RecordError, match=f"{pairs}:2: column 'score'"):
        open_training_data([str(pairs)], None, tmp_path / "cache", {"pairs.jsonl": spec})


def test_file_formats_name_train_files_and_known_formats(tmp_path):
    from sfr_ds.config import ConfigError

    src = str(DATA / "tiny.jsonl")
    for spec, says in (
        ({"other.jsonl": {"format": "flagembedding"}}, "names no file"),
        ({"tiny.jsonl": {"format": "flag"}}, "'flag'; expected one of"),
        ({"tiny.jsonl": {"format": "flagembedding", "task": "sts"}}, "unknown key(s) ['task']"),
    ):
        with pytest.raises(ConfigError) as e:
            open_training_data([src], None, tmp_path / "cache", spec)
        assert says in str(e.value)
