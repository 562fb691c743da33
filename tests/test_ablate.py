"""`sfr-ds ablate` planning without training: the row keys `cap`, `labels` and `datasets` resolve
into the right mine / records / train arguments, rows shared between studies are planned once,
the derived records are what the keys say, and `--plan` shows what is left with its commands."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from sfr_ds.ablate import Row, describe_plan, load_ablate_config, plan, seed_means
from sfr_ds.data.records import read_jsonl, write_jsonl
from sfr_ds.demo import BUNDLED, TRAIN_FILES
from sfr_ds.eval.suite import Scores
from sfr_ds.pipeline import Stage

SEED1 = {"run.seed": 1, "data.seed": 1}
CAP = "relative:0.95"


def config(tmp_path: Path, studies: dict, **fields) -> Path:
    path = tmp_path / "ablate.yaml"
    cfg = {"output_dir": str(tmp_path / "ab"), "records_per_dataset": 16, "studies": studies, **fields}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def planned(path: Path, *overrides: str):
    cfg, studies = load_ablate_config(path, list(overrides))
    stages, columns = plan(cfg, studies)
    return cfg, stages, columns


def by_name(stages, prefix: str) -> list[Stage]:
    return [s for s in stages if s.name.startswith(prefix)]


def arg(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def train_files(stage: Stage) -> str:
    (files,) = [a for a in stage.command if a.startswith("data.train_files=")]
    return files.removeprefix("data.train_files=[").removesuffix("]")


NEW_ROWS = {
    "base": {},
    "cap": {"cap": CAP},
    "cap, seed 1": {"cap": CAP, "train": SEED1},
    "mask": {"cap": CAP, "train": {"loss.false_negative_margin": 0.1}},
    "examples": {"labels": "examples"},
    "retrieval": {"datasets": ["scifact"]},
    "retrieval + clustering": {"datasets": ["banking77", "scifact"]},
    "same, other order": {"datasets": ["scifact", "banking77"]},
    "all, named": {"datasets": ["stsb", "scifact", "banking77"]},
}


def test_new_keys_resolve_into_mine_records_and_train_arguments(tmp_path):
    _, stages, columns = planned(config(tmp_path, {"s": {"rows": NEW_ROWS}}))
    out = tmp_path / "ab"
    mines = by_name(stages, "mine:")
    assert [s.output.name for s in mines] == [
        "minilm_30-100_k7.jsonl",
        "minilm_30-100_k7_cap-relative_0.95.jsonl",
    ]
    assert "--cap" not in mines[0].command and arg(mines[1].command, "--cap") == CAP
    assert arg(mines[1].command, "--range") == "30" and arg(mines[1].command, "--k") == "7"

    trains = {s.output.parent.name: s for s in by_name(stages, "train row")}
    plain = str(out / "mined" / "minilm_30-100_k7.jsonl")
    expected_files = {
        "baseline": plain,
        "cap-relative_0.95": str(mines[1].output),
        "cap-relative_0.95__data.seed-1__run.seed-1": str(mines[1].output),
        "cap-relative_0.95__loss.false_negative_margin-0.1": str(mines[1].output),
        "labels-examples": str(out / "mined" / "minilm_30-100_k7__labels-examples.jsonl"),
        "datasets-scifact": str(out / "mined" / "minilm_30-100_k7__datasets-scifact.jsonl"),
        "datasets-banking77-scifact": str(
            out / "mined" / "minilm_30-100_k7__datasets-banking77-scifact.jsonl"
        ),
    }
    # one run per distinct setting: the order of datasets and naming all three change nothing
    assert {slug: train_files(s) for slug, s in trains.items()} == expected_files
    mask = trains["cap-relative_0.95__loss.false_negative_margin-0.1"]
    assert "loss.false_negative_margin=0.1" in mask.command
    assert not any(a.startswith("loss.") for a in trains["cap-relative_0.95"].command)
    derived = by_name(stages, "records:")
    assert {s.output for s in derived} == {Path(f) for f in expected_files.values() if "__" in f}
    assert all(s.call and not s.command for s in derived)
    assert columns["s"]["same, other order"] == columns["s"]["retrieval + clustering"]
    assert columns["s"]["all, named"] == columns["s"]["base"] == out / "rows" / "baseline" / "eval"
    # every stage's input is planned before it: mined files before their records, records before training
    position = {str(s.output): i for i, s in enumerate(stages)}
    for s in trains.values():
        assert position[train_files(s)] < position[str(s.output)]


def test_the_new_studies_share_the_baseline_and_noise_rows(tmp_path):
    """configs/ablations_cpu.yaml: its three issue-18 studies add 15 runs and one mining to `noise`."""
    path = ROOT / "configs" / "ablations_cpu.yaml"
    overrides = [f"output_dir={tmp_path / 'ab'}", 'start_from_demo=""']
    cfg, studies = load_ablate_config(path, overrides)
    new = ("false_negatives", "labels", "multitask")
    only_noise, _ = plan(cfg, {"noise": studies["noise"]})
    with_new, columns = plan(cfg, {name: studies[name] for name in ("noise", *new)})
    runs = lambda stages: {str(s.output) for s in by_name(stages, "train row")}
    assert len(runs(only_noise)) == 3 and runs(only_noise) < runs(with_new)
    assert len(runs(with_new) - runs(only_noise)) == 15  # 5 new settings x 3 seeds
    assert len(by_name(with_new, "mine:")) == 2 and len(by_name(with_new, "records:")) == 3
    noise = list(columns["noise"].values())
    for name, baseline_columns in (
        ("false_negatives", ["window", "window, seed 1", "window, seed 2"]),
        ("labels", ["labels", "labels, seed 1", "labels, seed 2"]),
        ("multitask", ["all tasks", "all tasks, seed 1", "all tasks, seed 2"]),
    ):
        assert [columns[name][c] for c in baseline_columns] == noise
        assert len(columns[name]) == {"labels": 6}.get(name, 9)
        assert len(set(columns[name].values())) == len(columns[name])  # no two columns one run


def prepared(tmp_path: Path, stages) -> Path:
    """Prepare the bundled records (in this process) and use them as the mined file: the records
    stage does not look at the negatives mining would add to retrieval and STS records."""
    by_name(stages, "prepare")[0].call()
    mined = tmp_path / "ab" / "mined" / "minilm_30-100_k7.jsonl"
    mined.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "ab" / "data" / "train.jsonl", mined)
    return mined


def test_datasets_keep_exactly_the_records_of_those_datasets(tmp_path):
    _, stages, _ = planned(config(tmp_path, {"s": {"rows": {"r": {"datasets": ["scifact", "banking77"]}}}}))
    mined = prepared(tmp_path, stages)
    (derive,) = by_name(stages, "records:")
    derive.call()
    want = [line for line in mined.read_text().splitlines() if json.loads(line)["dataset"] != "stsb"]
    assert derive.output.read_text().splitlines() == want and len(want) == 32


def test_examples_rebuild_the_labelled_records_from_bundled_examples(tmp_path):
    demo = tmp_path / "demo"  # a finished demo's records: their texts are not used
    demo_records = [r for name in TRAIN_FILES for r in read_jsonl(BUNDLED / name)[:50]]
    write_jsonl(demo_records, demo / "data" / "train.jsonl")
    (demo / "summary.md").write_text("done")
    rows = {"r": {"labels": "examples", "datasets": ["stsb", "banking77"]}}
    _, stages, _ = planned(config(tmp_path, {"s": {"rows": rows}}, start_from_demo=str(demo)))
    mined = prepared(tmp_path, stages)
    (derive,) = by_name(stages, "records:")
    assert derive.output.name == "minilm_30-100_k7__labels-examples__datasets-banking77-stsb.jsonl"
    derive.call()
    got, before = read_jsonl(derive.output), read_jsonl(mined)

    used = {t for r in demo_records for t in [r.query, *r.pos]}
    label_of = {r.query: r.extra["label"] for r in read_jsonl(BUNDLED / "banking77_train.jsonl")}
    pool = Counter(label for text, label in label_of.items() if text not in used)
    banking = [r for r in before if r.dataset == "banking77"]
    alone = [r.query for r in banking if pool[r.extra["label"]] == 1]  # no other example: left out
    sts = [[r.to_json() for r in records if r.dataset == "stsb"] for records in (got, before)]
    assert sts[0] == sts[1] and len(sts[0]) == 16
    examples = [r for r in got if r.dataset == "banking77"]
    assert [r.query for r in examples] == [r.query for r in banking if r.query not in alone]
    for r in examples:
        label = label_of[r.query]
        assert r.extra["label"] == label and r.pos[0] != r.query and label_of[r.pos[0]] == label
        neg_labels = [label_of[t] for t in r.neg]
        assert len(r.neg) == 7 and label not in neg_labels and len(set(neg_labels)) == 7
        assert not {*r.pos, *r.neg} & used and r.instruction == banking[0].instruction
    first = derive.output.read_bytes()
    derive.output.unlink()
    derive.call()
    assert derive.output.read_bytes() == first  # the same data give the same records


def test_seed_means_are_each_settings_mean_and_sample_sd():
    def scores(label, retrieval, sts):
        return Scores(label, {}, {"Retrieval_dev": retrieval, "STS_dev": sts}, [])

    base = Row("bm25", (30, 100), 7, ())
    other = Row("bm25", (30, 100), 7, (("loss.false_negative_margin", "0.1"),))
    cols = [scores("a", 66.96, 61), scores("a1", 67.78, 62), scores("a2", 66.42, 63), scores("b", 68, 60)]
    text = seed_means(cols, [base, base, base, other])
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    # Retrieval: mean 67.0533, sd sqrt(((-0.0933)^2 + 0.7267^2 + (-0.6333)^2) / 2) = 0.6848; b alone: no sd
    assert lines["Metric"] == "| Metric | a (n=3) | b (n=1) | Δ b (n=1) |"
    assert lines["Retrieval_dev"] == "| Retrieval_dev | 67.05 ± 0.68 | 68.00 | +0.95 |"
    assert lines["STS_dev"] == "| STS_dev | 62.00 ± 1.00 | 60.00 | -2.00 |"
    # AVG: the mean of each column's groups (63.98, 64.89, 64.71): 64.5267 ± 0.4819
    assert lines["AVG"] == "| AVG | 64.53 ± 0.48 | 64.00 | -0.53 |"
    assert seed_means(cols[:2], [base, other]) == ""  # no setting with two seeds


def test_describe_plan_shows_todo_commands_and_counts():
    stages = [
        Stage("mine: bm25", Path("/m"), lambda: True, ["python", "-m", "sfr_ds.cli", "mine", "x"]),
        Stage("mine: bm25, cap", Path("/c"), lambda: False, ["python", "-m", "sfr_ds.cli", "mine", "a b"]),
        Stage("records: x", Path("/r"), lambda: False, call=lambda: None),
        Stage("train row x", Path("/t"), lambda: False, ["python", "-m", "sfr_ds.cli", "train", "c"]),
        Stage("evaluate row x", Path("/e"), lambda: False, ["python", "-m", "sfr_ds.cli", "eval", "run"]),
    ]
    lines = describe_plan(stages).splitlines()
    assert lines[:4] == [
        "[done] mine: bm25 -> /m",
        "[todo] mine: bm25, cap -> /c",
        "    $ sfr-ds mine 'a b'",
        "[todo] records: x -> /r",
    ]
    assert lines[-2] == "5 stages, 1 finished; to run: 1 mining, 1 training, 1 evaluation, 1 other"
    assert lines[-1].startswith("about 4 min of training and evaluation")  # 100 s + 110 s


@pytest.mark.integration
def test_plan_option_runs_nothing(tmp_path):
    from click.testing import CliRunner

    from sfr_ds.cli import main

    path = config(tmp_path, {"s": {"rows": {"base": {}, "cap": {"cap": CAP}}}})
    result = CliRunner().invoke(main, ["ablate", str(path), "--plan"])
    assert result.exit_code == 0, result.output
    assert "--cap relative:0.95" in result.output and "[done]" not in result.output
    assert "to run: 2 mining, 2 training, 2 evaluation, 1 other" in result.output
    assert not (tmp_path / "ab").exists()
