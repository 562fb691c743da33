"""`sfr-ds demo` and `sfr-ds ablate` end to end through the real commands, on a small real model.

MiniLM (a real 22M encoder) stands in for SmolLM2 so the whole chain (prepare, mine, evaluate,
train with 2 ranks under ZeRO-2 with GradCache, merge, evaluate) fits in a test; the measured
SmolLM2 demo is in README.md and docs/ablations.md.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, sfr_ds

from sfr_ds.ablate import load_ablate_config, plan
from sfr_ds.config import ConfigError
from sfr_ds.data.records import read_jsonl, write_jsonl
from sfr_ds.demo import BUNDLED as TRAIN_BUNDLE
from sfr_ds.demo import TRAIN_FILES
from sfr_ds.eval.runner import Manifest
from sfr_ds.eval.suite import BUNDLED

pytestmark = pytest.mark.integration

MINILM_TRAIN = {
    "model": {"name_or_path": "builtin:minilm", "pooling": "mean", "dtype": "fp32"},
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "data": {
        "train_files": [],
        "global_batch_size": 8,
        "hard_negatives": 1,
        "query_max_len": 32,
        "doc_max_len": 48,
        "homogeneous": True,
    },
    "gradcache": {"enabled": True, "packing": True, "chunk_tokens": 256},
    "optim": {"lr": 1e-3, "warmup_steps": 1, "max_steps": 2},
    "deepspeed": {"config": str(ROOT / "ds_configs" / "zero2.json")},
    "run": {"output_dir": "unused", "save_every": 100},
}
STS = f"sts:{BUNDLED}/stsbenchmark/sts-test.csv?name=STSBenchmark-mini"


def main_score(eval_dir: Path, task: str) -> float:
    """The task's full-width score, from mteb's own result file."""
    result = Manifest.load(eval_dir).result_path(eval_dir, task)
    return json.loads(result.read_text())["scores"]["test"][0]["main_score"]


def table_rows(markdown: str) -> dict[str, list[str]]:
    """First table of a markdown text: first cell -> other cells."""
    rows = {}
    for line in markdown.split("\n\n")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def minilm_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "minilm.yaml"
    path.write_text(yaml.safe_dump(MINILM_TRAIN))
    return path


def test_demo_runs_every_stage_then_continues_from_its_outputs(tmp_path, minilm_config):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--output-dir",
        out,
        "--config",
        minilm_config,
        "--teacher",
        "bm25",
        "--records-per-dataset",
        "16",
        "--range",
        "0",
        "20",
    ]
    first = sfr_ds(*args, timeout=900).stdout
    heads = re.findall(r"\[demo (\d)/6 +\d+s\] ([^\n]*?) ->", first)
    assert [n for n, _ in heads] == list("123456"), first
    mined = [json.loads(line) for line in (out / "data" / "mined.jsonl").read_text().splitlines()]
    # BM25 over a pool of ~130 texts leaves a few queries nothing in ranks 0-20 with a score > 0
    assert len(mined) == 48 and sum(bool(r["neg"]) for r in mined) >= 40
    merged_meta = json.loads((out / "merged" / "sfr_ds.json").read_text())
    assert merged_meta["merged"] and merged_meta["pooling"] == "mean"
    assert json.loads((out / "eval" / "after" / "model_settings.json").read_text())["source"] == str(
        out / "merged"
    )

    rows = table_rows((out / "summary.md").read_text().split("\n", 2)[2])
    assert rows["Metric"][:2] == ["untrained", "trained"]
    tasks = table_rows((out / "summary.md").read_text().split("\n\n")[2])
    for task in ("SciFact-mini", "STSBenchmark-mini", "PubMedQA-mini", "Banking77Clustering-mini"):
        before, after = (float(x) for x in tasks[task][:2])
        assert before == pytest.approx(100 * main_score(out / "eval" / "before", task), abs=0.006)
        assert after == pytest.approx(100 * main_score(out / "eval" / "after", task), abs=0.006)
    assert any(float(v[0]) != float(v[1]) for k, v in tasks.items() if k != "Task")  # training did something

    again = sfr_ds(*args, timeout=600).stdout
    assert again.count("done already") == 6, again
    assert (out / "summary.md").read_text().split("\n", 2)[2] in again


NEGATIVES_STUDY = {"rows": {"#HN=1": {}, "#HN=2": {"train": {"data.hard_negatives": 2}}}}


def ablate_yaml(tmp_path: Path, train_config: Path, **fields) -> Path:
    """An ablation config into tmp_path/ab: a BM25 30-100 k=3 baseline, the given fields."""
    path = tmp_path / "ablate.yaml"
    cfg = {
        "output_dir": str(tmp_path / "ab"),
        "train_config": str(train_config),
        "baseline": {"teacher": "bm25", "window": [30, 100], "k": 3},
        **fields,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow  # 90 s of training; tests/test_ablate.py checks the plan and the sharing without it
def test_ablate_shares_the_baseline_and_tabulates_each_row(tmp_path, minilm_config):
    cfg = ablate_yaml(
        tmp_path,
        minilm_config,
        records_per_dataset=16,
        eval_args=["--tasks", STS, "--query-max-len", "32", "--doc-max-len", "48"],
        studies={
            "teacher": {"title": "Teacher", "rows": {"BM25": {}, "Self": {"teacher": "self"}}},
            # and a soup of the two rows, every row also scored at 128 of MiniLM's 384 dimensions
            "negatives": {
                "dims": [128],
                "rows": {**NEGATIVES_STUDY["rows"], "Soup": {"soup": ["#HN=1", "#HN=2"]}},
            },
        },
    )
    out = sfr_ds("ablate", cfg, timeout=1200).stdout
    rows = sorted(p.name for p in (tmp_path / "ab" / "rows").iterdir())
    assert rows == ["baseline", "data.hard_negatives-2", "teacher-self"]  # baseline trained once
    run_yaml = yaml.safe_load(
        (tmp_path / "ab" / "rows" / "data.hard_negatives-2" / "train" / "run.yaml").read_text()
    )
    assert run_yaml["data"]["hard_negatives"] == 2
    assert "--teacher self:" + str(tmp_path / "ab" / "rows" / "baseline" / "train") in out
    rows = tmp_path / "ab" / "rows"
    soup = tmp_path / "ab" / "soups" / "negatives-Soup"
    for study, columns in (
        ("teacher", {"BM25": rows / "baseline", "Self": rows / "teacher-self"}),
        (
            "negatives",
            {"#HN=1": rows / "baseline", "#HN=2": rows / "data.hard_negatives-2", "Soup": soup},
        ),
    ):
        text = (tmp_path / "ab" / f"{study}.md").read_text()
        table = table_rows(text.split("\n\n", 1)[1])
        assert table["Metric"][: len(columns)] == list(columns)
        for cell, folder in zip(table["STS"], columns.values()):  # --tasks: grouped by type
            score = main_score(folder / "eval", "STSBenchmark-mini")
            assert float(cell) == pytest.approx(100 * score, abs=0.006)
    assert json.loads((soup / "model" / "sfr_ds.json").read_text())["soup"]["inputs"]
    assert "| AVG 128 |" in text and "| % of full at 128 |" in text  # the negatives study's widths
    assert "128" in json.loads((soup / "eval" / "summary.json").read_text())["dims"]
    again = sfr_ds("ablate", cfg, "--plan").stdout
    # prepare, 2 mines, 3 x (train, eval), the soup and its eval
    assert "[todo]" not in again and again.count("[done]") == 11


def test_ablate_config_reports_every_problem_at_once(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "baseline": {"teacher": "self", "window": [100, 30], "k": 7},
                "studies": {
                    "a": {"rows": {"x": {"windw": [0, 1]}}},
                    "b": {"rows": {}},
                    "c": {"dims": [0], "rows": {"x": {}, "s": {"soup": ["x", "nope"], "k": 3}}},
                },
                "nprocs": 2,
            }
        )
    )
    with pytest.raises(ConfigError) as e:
        load_ablate_config(cfg)
    text = str(e.value)
    for needle in (
        "unknown field 'nprocs'",
        "studies.a.rows.x.windw",
        "studies.b: no rows",
        "'baseline.window' must be [lo, hi)",
        "'baseline.teacher' cannot be self",
        "'studies.c.dims' must be whole numbers >= 1",
        "'studies.c.rows.s.soup' names ['nope'], not trained columns of the study (['x'])",
        "'studies.c.rows.s': a soup row changes nothing else",
    ):
        assert needle in text, text


def test_ablate_from_demo_runs_the_demo_first_and_trains_on_records_it_did_not(tmp_path, minilm_config):
    demo = tmp_path / "demo"
    demo_records = [r for name in TRAIN_FILES for r in read_jsonl(TRAIN_BUNDLE / name)[:40]]
    write_jsonl(demo_records, demo / "data" / "train.jsonl")  # an unfinished demo: no summary.md
    cfg_path = ablate_yaml(
        tmp_path,
        minilm_config,
        records_per_dataset=300,
        start_from_demo=str(demo),
        studies={"negatives": NEGATIVES_STUDY},
    )
    cfg, studies = load_ablate_config(cfg_path)
    stages, _ = plan(cfg, studies)
    assert stages[0].command[-3:] == ["demo", "--output-dir", str(demo)] and not stages[0].done()
    start_eval = next(s for s in stages if s.name == "evaluate the starting model")
    assert start_eval.command[start_eval.command.index("run") + 1] == str(demo / "merged")
    trains = [s for s in stages if s.name.startswith("train row")]
    assert len(trains) == 2 and all(f"model.name_or_path={demo / 'merged'}" in s.command for s in trains)

    next(s for s in stages if s.name.startswith("prepare")).call()
    got = read_jsonl(tmp_path / "ab" / "data" / "train.jsonl")
    used = {t for r in demo_records for t in [r.query, *r.pos]}
    assert not {r.query for r in got} & used
    for name in TRAIN_FILES:  # 300 asked, fewer left where the demo's 40 (and STS's reversed pairs) are out
        left = [r for r in read_jsonl(TRAIN_BUNDLE / name) if r.query not in used]
        assert (
            sum(r.dataset == left[0].dataset for r in got)
            == min(300, len(left))
            < len(read_jsonl(TRAIN_BUNDLE / name))
        )
