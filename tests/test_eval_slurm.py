"""`sfr-ds eval --slurm` against a real Slurm started on this machine (tests/slurm_cluster.py).

Submit returns at once without importing torch or mteb; status shows the array's elements;
collect waits, aggregates and names the task whose element failed; resubmit runs that task
alone in a new one-element array, and the finished tasks are not run again.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA, proc_env, sfr_ds
from slurm_cluster import cluster_fixture
from test_bad_inputs_eval import HOSTILE, STS_JSONL, hf_model, write
from test_eval import mini_beir

cluster = cluster_fixture(scope="module")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} not present"),
]

SUBMIT_LIGHT = """
import sys
from sfr_ds.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("HEAVY:", sorted(m for m in ("torch", "mteb", "transformers") if m in sys.modules))
"""


def cli(cluster, *args, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    return sfr_ds("eval", *args, env=cluster.env(proc_env()), timeout=timeout, check=check)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm-data")
    mini_beir(SHARED_DATA / "scifact", root / "scifact", n_queries=10, n_docs=60)
    broken = mini_beir(SHARED_DATA / "scifact", root / "broken" / "scifact", n_queries=5, n_docs=30)
    with open(broken / "corpus.jsonl", "a") as f:
        f.write("{this is not json\n")
    sts = (SHARED_DATA / "stsbenchmark" / "sts-test.csv").read_text().splitlines(keepends=True)[:60]
    (root / "stsbenchmark").mkdir()
    (root / "stsbenchmark" / "sts-test.csv").write_text("".join(sts))
    return root


def test_slurm_submit_status_collect_and_resubmit_failed_task_alone(cluster, data, tmp_path):
    out, cache = tmp_path / "eval", tmp_path / "cache"
    tasks = (
        f"retrieval:{data}/scifact,sts:{data}/stsbenchmark/sts-test.csv,"
        f"retrieval:{data}/broken/scifact?name=BrokenRetrieval"
    )

    # submit: returns at once, light (a login node imports neither torch nor mteb)
    start = time.time()
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            SUBMIT_LIGHT,
            "eval",
            "builtin:minilm",
            "--tasks",
            tasks,
            "--slurm",
            "--sbatch",
            "--cpus-per-task=1",
            "--output-dir",
            str(out),
            "--cache-dir",
            str(cache),
        ],
        capture_output=True,
        text=True,
        env=cluster.env(proc_env()),
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert time.time() - start < 30
    assert "HEAVY: []" in p.stdout
    job = p.stdout.split("submitted job ")[1].split(":")[0]
    assert "3 task(s) in 3 array element(s)" in p.stdout
    assert sorted(cluster.run("squeue", "-h", "-r", "-j", job, "-o", "%i").stdout.split()) == [
        f"{job}_{i}" for i in range(3)
    ]

    # status right away: every task is pending or running, under its own array element
    status = cli(cluster, "status", out).stdout
    for name, element in (("SciFact", 0), ("STSBenchmark", 1), ("BrokenRetrieval", 2)):
        line = next(line for line in status.splitlines() if line.startswith(name))
        assert f"{job}_{element}" in line and ("pending" in line or "running" in line or "done" in line)

    # collect waits, aggregates what finished, names the failed task and how to re-submit it
    p = cli(cluster, "collect", out, "--wait", "--poll", "1", "--timeout", "500", check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    failed_line = next(line for line in p.stdout.splitlines() if line.startswith("BrokenRetrieval"))
    assert "failed" in failed_line and "not valid JSON" in failed_line and f"{job}_2.out" in failed_line
    assert f"sfr-ds eval resubmit {out.resolve()} --task BrokenRetrieval" in p.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"SciFact", "STSBenchmark"} and summary["missing"] == ["BrokenRetrieval"]
    assert "Traceback" in (out / "slurm" / "logs" / f"{job}_2.out").read_text()
    assert "| Retrieval |" in (out / "summary.md").read_text()
    # the submit read each file's first row only; the elements counted what they scored
    assert "- STSBenchmark: 60 pairs scored, 0 dropped" in (out / "summary.md").read_text()

    # fix the data, re-submit the failed task alone
    done = {
        p: p.stat().st_mtime_ns
        for p in (out / "results").rglob("*.json")
        if p.stem in ("SciFact", "STSBenchmark")
    }
    assert len(done) == 2
    corpus = data / "broken" / "scifact" / "corpus.jsonl"
    corpus.write_text("".join(corpus.read_text().splitlines(keepends=True)[:-1]))
    p = cli(cluster, "resubmit", out, "--sbatch", "--cpus-per-task=1")
    job2 = p.stdout.split("submitted job ")[1].split(":")[0]
    assert "1 task(s), one per array element" in p.stdout
    manifest = json.loads((out / "eval.json").read_text())
    assert manifest["elements"] == [[0], [1], [2], [2]]  # one new element, the failed task only

    p = cli(cluster, "collect", out, "--wait", "--poll", "1", "--timeout", "500")
    assert set(json.loads((out / "summary.json").read_text())["tasks"]) == {
        "SciFact",
        "STSBenchmark",
        "BrokenRetrieval",
    }
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished tasks were not run again
    log = (out / "slurm" / "logs" / f"{job2}_3.out").read_text()
    assert "BrokenRetrieval" in log and "SciFact:" not in log and "STSBenchmark" not in log
    status = cli(cluster, "status", out).stdout
    assert all(" done " in line for line in status.splitlines()[1:])


@pytest.mark.parametrize("hostile", HOSTILE)
def test_sbatch_reads_a_hostile_output_path_whole(cluster, hostile, tmp_path):
    """sbatch parses the script's #SBATCH lines itself (bash skips them): with spaces, quotes,
    $(...), backticks and % in the output path, the element's log lands in OUT/slurm/logs and the
    worker records its (fail-fast: the model changed) result in OUT; nothing the path holds runs."""
    t = tmp_path / hostile
    data = write(t / "data" / "pairs.jsonl", STS_JSONL)
    model, out = hf_model(t / "model"), t / "out"
    p = cli(cluster, model, "--tasks", f"sts:{data}?name=Pairs", "--slurm", "--output-dir", out,
            "--sbatch", "--cpus-per-task=1 --hold")  # fmt: skip
    job = p.stdout.split("submitted job ")[1].split(":")[0]
    write(model / "retrained.txt", "new weights")  # the element stops at once: the model changed
    cluster.run("scontrol", "release", job)
    p = cli(cluster, "collect", out, "--wait", "--poll", "1", "--timeout", "120", check=False)
    assert p.returncode == 1 and "Pairs" in p.stdout, p.stdout + p.stderr
    log = (out / "slurm" / "logs" / f"{job}_0.out").read_text()
    assert "Pairs: FAILED" in log and "changed since" in log, log
    assert json.loads((out / "status" / "Pairs.json").read_text())["job"] == f"{job}_0"
    assert not [*tmp_path.rglob("INJECTED"), *ROOT.glob("INJECTED")]
