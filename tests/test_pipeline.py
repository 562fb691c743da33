"""The stage runner without a model: tiny shell commands for the local runner, and the completeness
checks. Submitting to Slurm is tested on a real local cluster in tests/test_rounds.py."""

import json
import sys
from pathlib import Path

import pytest

from sfr_ds.pipeline import Job, Stage, cli, eval_done, run_local, status, submit, trained, written


def touch(path: Path) -> list[str]:
    return ["sh", "-c", f"echo made > '{path}'"]


def file_stages(tmp_path: Path, second: list[str]) -> list[Stage]:
    a, b, c = (tmp_path / n for n in "abc")
    return [
        Stage("make a", a, written(a), touch(a)),
        Stage("make b", b, written(b), second),
        Stage("make c", c, written(c), touch(c)),
    ]


def test_a_failing_stage_stops_the_run_and_the_same_run_continues_after_it(tmp_path, capfd):
    with pytest.raises(RuntimeError, match="test stage 'make b' failed; fix the cause and run the same"):
        run_local(file_stages(tmp_path, ["sh", "-c", "exit 3"]), "test")
    assert (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    out = capfd.readouterr().out
    assert f"[test 1/3     0s] make a -> {tmp_path / 'a'}" in out and "  $ sh -c 'echo made > " in out

    run_local(file_stages(tmp_path, touch(tmp_path / "b")), "test")
    out = capfd.readouterr().out
    assert f"] make a: done already ({tmp_path / 'a'})" in out
    assert "make b ->" in out and "make c ->" in out and (tmp_path / "c").exists()


def test_finished_stages_are_skipped_and_in_process_stages_run_here(tmp_path, capfd):
    calls = []
    stages = [
        Stage("finished", tmp_path / "x", lambda: True, ["sh", "-c", "exit 1"]),
        Stage("here", tmp_path / "y", lambda: False, call=lambda: calls.append("here")),
    ]
    run_local(stages, "test")
    assert calls == ["here"] and "finished: done already" in capfd.readouterr().out


def test_completeness_checks(tmp_path):
    run, folder = tmp_path / "run", tmp_path / "eval"
    assert not trained(run)() and not eval_done(folder) and not written(tmp_path / "f")()
    (run / "final").mkdir(parents=True)
    (run / "final" / "sfr_ds.json").write_text("{}")
    assert trained(run)()
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"missing": ["SciFact"]}))
    assert not eval_done(folder)
    (folder / "summary.json").write_text(json.dumps({"missing": []}))
    assert eval_done(folder)


def test_cli_is_this_interpreter_running_sfr_ds():
    assert cli("eval", "run", Path("m"), "--k", 3) == [
        sys.executable,
        "-m",
        "sfr_ds.cli",
        "eval",
        "run",
        "m",
        "--k",
        "3",
    ]


def test_slurm_runner_submits_nothing_for_complete_stages(tmp_path):
    """Complete stages need no Slurm command (PATH is empty here, so one would fail)."""
    stages = [
        Stage(f"round 1 {kind}", tmp_path, lambda: True, ["true"], job=Job(f"1/{kind}", kind, tmp_path / "l"))
        for kind in ("mine", "train")
    ]
    state = tmp_path / "state.json"
    assert submit(stages, state, env={"PATH": ""}) == [
        "round 1 mine: complete, skipped",
        "round 1 train: complete, skipped",
    ]
    assert not state.exists()
    assert status(stages, state, env={"PATH": ""}) == ["round 1 mine: complete", "round 1 train: complete"]
    pending = Stage(
        "round 1 eval", tmp_path / "e", lambda: False, ["true"], job=Job("1/eval", "e", tmp_path / "l")
    )
    assert status([pending], state, env={"PATH": ""}) == ["round 1 eval: not submitted"]


def test_rounds_with_a_soup_of_the_last_checkpoints(tmp_path):
    """soup_last: K puts `sfr-ds soup RUN --last K` between training and evaluation, keeps K
    checkpoints, and the next round mines with the soup."""
    from sfr_ds.rounds import RoundsConfig, stages

    cfg = RoundsConfig(output_dir=str(tmp_path), rounds=2, train_input="x.jsonl", soup_last=3)
    names = [s.name for s in stages(cfg)]
    assert names[:4] == ["round 1 mine", "round 1 train", "round 1 soup", "round 1 eval"]
    soup, evaluate, mine2 = (stages(cfg)[i] for i in (2, 3, 4))
    assert soup.command[-5:] == [
        str(tmp_path / "round-1" / "train"),
        "--out",
        str(tmp_path / "round-1" / "soup"),
        "--last",
        "3",
    ]
    assert evaluate.command[evaluate.command.index("run") + 1] == str(tmp_path / "round-1" / "soup")
    assert f"self:{tmp_path / 'round-1' / 'soup'}" in mine2.command
    assert "run.keep_checkpoints=3" in stages(cfg)[1].command
    assert soup.job.options == ["--ntasks=1", "--cpus-per-task=4", "--time=1:00:00"]
