"""Mining-then-training rounds on a real local Slurm: 2 rounds, a forced failure, a continuation.

Round 1 mines with MiniLM, round 2 with the round-1 model; each round trains the tiny model and
evaluates it on a small STS file. Round 2's training job is cancelled while it runs; running the
same command again skips every complete stage and finishes round 2.
"""

import sys

import pytest
import yaml
from conftest import ROOT, proc_env, sfr_ds
from slurm_cluster import cluster_fixture
from test_slurm_train import SHRINK, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slurm]
cluster = cluster_fixture(partitions=("gpu", "debug"))
ONE_CPU = ["--ntasks=1", "--cpus-per-task=1", "--mem=2G", "--time=20"]


def rounds(cluster, cfg_path, *args):
    env = cluster.env(proc_env())
    env.update(SFR_DS_PYTHON=sys.executable, SFR_DS_HOME=str(ROOT))
    return sfr_ds("rounds", cfg_path, *args, env=env, timeout=120).stdout


def test_two_rounds_with_a_failure_in_round_two(cluster, tmp_path, shared_data):
    sts = tmp_path / "sts-small.csv"
    sts.write_text("".join((shared_data / "stsbenchmark" / "sts-dev.csv").read_text().splitlines(True)[:120]))
    cfg = {
        "output_dir": str(tmp_path / "pipeline"),
        "rounds": 2,
        "train_input": "sfr_ds/resources/data/tiny.jsonl",
        "corpus": "from-records",
        "teacher": "builtin:minilm",
        "mine_args": ["--range", "2", "20", "--k", "3", "--doc-max-len", "64", "--batch-size", "64"],
        "train_config": "configs/tiny.yaml",
        "train_overrides": ["optim.max_steps=4", "run.save_every=1"],
        "eval_args": ["--tasks", f"sts:{sts}"],
        "slurm": {"mine": ONE_CPU, "train": SHRINK, "eval": ONE_CPU},
    }
    cfg_path = tmp_path / "rounds.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = rounds(cluster, cfg_path)
    assert out.count("submitted job") == 6, out
    state = lambda: yaml.safe_load((tmp_path / "pipeline" / "rounds.json").read_text())
    train2 = state()["2/train"]
    wait_until(
        lambda: (
            cluster.run("squeue", "-h", "-j", train2, "-o", "%T", check=False).stdout.strip() == "RUNNING"
        ),
        "round 2 training to start",
        timeout=600,
        cluster=cluster,
    )
    cluster.run("scancel", train2)  # the forced failure
    wait_until(lambda: not cluster.queue(), "the queue to drain", timeout=300, cluster=cluster)
    status = rounds(cluster, cfg_path, "--status")
    assert "round 1 eval: complete" in status and "round 2 mine: complete" in status, status
    assert "round 2 train: job" in status and "ended without its output" in status, status
    assert "round 2 eval: job" in status and "ended without its output" in status, status

    again = rounds(cluster, cfg_path)  # the same command continues from round 2
    for stage in ("round 1 mine", "round 1 train", "round 1 eval", "round 2 mine"):
        assert f"{stage}: complete, skipped" in again, again
    assert "round 2 train: submitted" in again and "round 2 eval: submitted" in again
    wait_until(lambda: not cluster.queue(), "round 2 to finish", timeout=600, cluster=cluster)
    final = rounds(cluster, cfg_path, "--status")
    assert final.count(": complete") == 6, final
    # round 2 really mined with the round-1 model, and trained on what it mined
    mine_log = next((tmp_path / "pipeline" / "round-2" / "logs").glob("mine-*.out")).read_text()
    assert "teacher self:" in mine_log and "round-1" in mine_log, mine_log
    first_log = next((tmp_path / "pipeline" / "round-1" / "logs").glob("mine-*.out")).read_text()
    assert "teacher builtin:minilm" in first_log or "teacher minilm" in first_log, first_log
    run_yaml = yaml.safe_load((tmp_path / "pipeline" / "round-2" / "train" / "run.yaml").read_text())
    assert run_yaml["data"]["train_files"] == [str(tmp_path / "pipeline" / "round-2" / "mined.jsonl")]
    assert (tmp_path / "pipeline" / "round-2" / "eval" / "summary.md").exists()
