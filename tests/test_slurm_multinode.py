"""slurm/train_multinode.sh, mining and eval arrays on a real two-node local Slurm (node1, node2).

Both nodes are this machine (tests/slurm_cluster.py: one slurmd each, names on 127.0.0.1), so the
run directory is shared as on a cluster file system. Jobs are shrunk at submit time to one CPU rank
per node. The reference of every comparison is the same config on two ranks of *one* node.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA, TINY, proc_env, read_metrics, sfr_ds
from slurm_cluster import cluster_fixture
from test_slurm_train import _cmdline, finished, job_state, same, wait_until

from sfr_ds import pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slurm]
cluster = cluster_fixture(nodes=2, partitions=("gpu", "debug"))
SCRIPT = ROOT / "slurm" / "train_multinode.sh"
ARGS = ["optim.max_steps=12", "run.save_every=2"]
ONE_CPU = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G", "--time=20"]
TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", *ONE_CPU]
ONE_NODE = ["--nodes=1", "--ntasks-per-node=2", *ONE_CPU]


def submit(cluster, run_dir: Path, layout: list[str], *extra: str, env: dict | None = None) -> str:
    """sbatch slurm/train_multinode.sh, resources overridden on the command line only."""
    e = cluster.env(proc_env())
    e.update(SFR_DS_PYTHON=sys.executable, SFR_DS_HOME=str(ROOT), **(env or {}))
    p = subprocess.run(
        ["sbatch", "--parsable", *layout, f"--output={run_dir}.log", str(SCRIPT), str(TINY)]
        + ["--output-dir", str(run_dir), *ARGS, *extra],
        cwd=ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def ranks(marker: str) -> dict[int, dict]:
    """The live Python ranks (srun tasks) whose command line holds ``marker``: SLURM_PROCID ->
    pid and the placement variables Slurm and slurm/srun_train.sh gave them."""
    out = {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        cmd = _cmdline(pid)
        if not (cmd.startswith(sys.executable) and marker in cmd):
            continue
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        env = dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
        if "SLURM_PROCID" in env:
            keys = ("SLURMD_NODENAME", "SLURM_LOCALID", "SLURM_NTASKS", "MASTER_ADDR", "MASTER_PORT")
            out[int(env["SLURM_PROCID"])] = {"pid": pid, **{k: env.get(k) for k in keys}}
    return out


def placement(cluster, marker: str, n: int, job: str) -> dict[int, dict]:
    """Wait until all ``n`` ranks run, then where each one is."""
    seen = {}

    def all_seen():
        seen.update(ranks(marker))
        assert not finished(cluster, job), f"job {job} ended before all its ranks were seen: {seen}"
        return len(seen) == n

    wait_until(all_seen, f"{n} ranks of job {job}", timeout=120, cluster=cluster)
    return seen


def comp_nodes(cluster, job: str) -> str:
    """The NodeList the job-completion log gives the (last run of the) job."""
    text = (cluster.root / "log" / "jobcomp.txt").read_text()
    return re.findall(rf"JobId={job} .*?NodeList=(\S+)", text)[-1]


def completed(cluster, job: str, run_dir: Path, timeout: float = 300) -> str:
    wait_until(lambda: finished(cluster, job), f"job {job}", timeout=timeout, cluster=cluster)
    log = Path(f"{run_dir}.log").read_text()
    assert job_state(cluster, job) == "COMPLETED", log[-3000:]
    return log


def marker(run_dir: Path) -> str:
    return f"--output-dir {run_dir} "


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The tiny config on 2 ranks of one node and on 1 rank on each of two nodes, run together."""
    root = tmp_path_factory.mktemp("mn")
    one, two = root / "one-node", root / "two-nodes"
    t0 = time.time()
    job1, job2 = submit(cluster, one, ONE_NODE), submit(cluster, two, TWO_NODES)
    where1 = placement(cluster, marker(one), 2, job1)
    where2 = placement(cluster, marker(two), 2, job2)
    log1, log2 = completed(cluster, job1, one), completed(cluster, job2, two)
    print(f"one-node and two-node jobs, run together: {time.time() - t0:.1f} s")
    return dict(one=one, two=two, job1=job1, job2=job2, where1=where1, where2=where2, log1=log1, log2=log2)


def test_two_nodes_train_the_same_model_as_one_node(cluster, runs):
    # the layout really differs: one rank on each node vs two on one node
    two, port = runs["where2"], str(20000 + int(runs["job2"]) % 20000)
    assert {r: w["SLURMD_NODENAME"] for r, w in two.items()} == {0: "node1", 1: "node2"}, two
    assert all(w["SLURM_LOCALID"] == "0" and w["SLURM_NTASKS"] == "2" for w in two.values()), two
    # rendezvous: first host of the node list, port from the job id, on every rank
    assert all(w["MASTER_ADDR"] == "node1" and w["MASTER_PORT"] == port for w in two.values()), two
    one = runs["where1"]
    assert len({w["SLURMD_NODENAME"] for w in one.values()}) == 1 and sorted(one) == [0, 1], one
    assert {w["SLURM_LOCALID"] for w in one.values()} == {"0", "1"}, one
    assert comp_nodes(cluster, runs["job2"]) == "node[1-2]"
    assert f"on node[1-2]: 2 ranks, master node1:{port}" in runs["log2"]
    assert "global batch 8 queries = 4 per rank x 2 ranks" in runs["log2"]
    assert [r["step"] for r in read_metrics(runs["two"])] == list(range(1, 13))
    # loss, grad_norm and every other untimed metric, and the final adapter, bit for bit
    same(runs["one"], runs["two"])


def _resumed(cluster, runs, run_dir: Path, job: str) -> None:
    wait_until(
        lambda: finished(cluster, job) and (run_dir / "final").exists(),
        "requeue and completion",
        cluster=cluster,
    )
    log = Path(f"{run_dir}.log").read_text()
    assert job_state(cluster, job) == "COMPLETED", log[-3000:]
    assert "restart 1 on node[1-2]: 2 ranks" in log and "resumed from" in log, log[-3000:]
    same(runs["one"], run_dir)


@pytest.mark.slow
def test_usr1_preemption_requeues_and_resumes_on_two_nodes(cluster, runs, tmp_path):
    run_dir = tmp_path / "usr1"
    job = submit(cluster, run_dir, TWO_NODES)
    wait_until(lambda: (run_dir / "checkpoints" / "latest").exists(), "a first checkpoint", cluster=cluster)
    cluster.run("scancel", "--batch", "--signal=USR1", job)  # what --signal=B:USR1@300 delivers
    _resumed(cluster, runs, run_dir, job)
    log = Path(f"{run_dir}.log").read_text()
    assert "USR1: asking every rank to checkpoint and stop" in log and "requeueing job" in log


@pytest.mark.slow
def test_external_requeue_resumes_on_two_nodes(cluster, runs, tmp_path):
    run_dir = tmp_path / "requeue"
    job = submit(cluster, run_dir, TWO_NODES)
    wait_until(lambda: (run_dir / "checkpoints" / "latest").exists(), "a first checkpoint", cluster=cluster)
    cluster.run("scontrol", "requeue", job)
    _resumed(cluster, runs, run_dir, job)


@pytest.mark.slow
def test_a_killed_rank_on_the_second_node_ends_the_job_quickly(cluster, tmp_path):
    run_dir = tmp_path / "dead"
    job = submit(cluster, run_dir, TWO_NODES, "optim.max_steps=100000", "run.save_every=100000")
    wait_until(lambda: (run_dir / "metrics.jsonl").exists(), "training steps", cluster=cluster)
    where = ranks(marker(run_dir))
    assert where[1]["SLURMD_NODENAME"] == "node2", where
    killed_at = time.time()
    os.kill(where[1]["pid"], signal.SIGKILL)
    wait_until(lambda: finished(cluster, job), "the job to end", timeout=120, cluster=cluster)
    took = time.time() - killed_at
    print(f"two-node job ended {took:.1f} s after node2's rank was killed")
    assert job_state(cluster, job) in ("FAILED", "CANCELLED", "NODE_FAIL")
    assert not ranks(marker(run_dir)), "a rank outlived its job"
    assert took < 30


@pytest.mark.slow
def test_node2_rank_killed_inside_a_save_leaves_latest_on_the_previous_step(cluster, runs, tmp_path):
    """node2's rank dies in step 6's save (its DeepSpeed shard written, its RNG file not): the job
    fails, ``latest`` stays on step 4, and the job submitted again ends with the same adapter."""
    run_dir = tmp_path / "in-save"
    job = submit(cluster, run_dir, TWO_NODES, env={"SFR_DS_FAULT_DIE_IN_SAVE": "6:1"})
    wait_until(lambda: finished(cluster, job), "the job to fail", cluster=cluster)
    assert job_state(cluster, job) in ("FAILED", "CANCELLED"), Path(f"{run_dir}.log").read_text()[-3000:]
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000004"
    assert (ckpts / "step-00000004" / "complete.json").exists()
    half = ckpts / "step-00000006"  # the interrupted save: both ranks' shards, no rank-1 RNG, no mark
    assert {p.name for p in half.glob("*optim_states.pt")} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }, sorted(p.name for p in half.iterdir())
    assert not (half / "rng_rank00001.pt").exists() and not (half / "complete.json").exists()
    assert [r["step"] for r in read_metrics(run_dir)][-1] == 6

    again = submit(cluster, run_dir, TWO_NODES)  # the user's "sbatch the same line again"
    log = completed(cluster, again, run_dir)
    assert f"resumed from {ckpts / 'step-00000004'} at step 4" in log, log[-3000:]
    same(runs["one"], run_dir)


class _Engine:  # writes nothing but the tag folder, as DeepSpeed's save_checkpoint would create it
    def save_checkpoint(self, root, tag, **_):
        Path(root, tag).mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("world", [1, 2])
def test_latest_moves_only_when_rank_zero_sees_every_ranks_files(world, tmp_path, monkeypatch):
    """Rank 0 of ``world`` ranks, the others silent (as if they wrote to a run directory on their
    own node's disk): with a second rank whose file is not there, the save fails naming the cause
    and neither ``complete.json`` nor ``latest`` is written."""
    from sfr_ds import dist
    from sfr_ds.engine import checkpoints
    from sfr_ds.run_dir import RunDir

    monkeypatch.setattr(dist, "info", lambda: dist.DistInfo(0, world, 0))
    monkeypatch.setattr(dist, "barrier", lambda: None)
    monkeypatch.setattr(dist, "broadcast_object", lambda obj, src=0: obj)
    monkeypatch.setattr(checkpoints, "RANK_FILES_WAIT_S", 0.0)
    run = RunDir(tmp_path)
    if world == 1:
        assert checkpoints.save(_Engine(), run, 2, keep=2) == "step-00000002"
        assert run.latest_tag() == "step-00000002"
        return
    with pytest.raises(checkpoints.CheckpointError, match=r"rank\(s\) \[1\] .* every node shares"):
        checkpoints.save(_Engine(), run, 2, keep=2)
    assert not run.latest_file.exists() and run.complete_tags() == []


# ----------------------------------------------------------------------------- mining, eval

MINE_ARGS = ["--no-progress", "--range", "2", "20", "--k", "3", "--doc-max-len", "64"]
MINE_ARGS += ["--batch-size", "16", "--shard-size", "8"]


@pytest.mark.slow
def test_mining_stage_on_two_nodes_equals_one_rank(cluster, tmp_path):
    """The pipeline's Slurm mining stage with one rank per node (shards dealt round-robin, so
    node2's rank encodes every other one) writes the same file as one local rank, byte for byte."""
    records = ROOT / "sfr_ds" / "resources" / "data" / "tiny.jsonl"
    local, spread = tmp_path / "local.jsonl", tmp_path / "two-nodes.jsonl"
    cache_arg = ["--cache-dir", str(tmp_path / "cache-local")]
    sfr_ds("mine", records, "--corpus", "from-records", "--teacher", "builtin:minilm", "--out", local,
           *MINE_ARGS, *cache_arg)  # fmt: skip

    cache = ["--cache-dir", tmp_path / "cache"]
    stage = pipeline.mine_stage("mine", records, spread, "builtin:minilm", *MINE_ARGS, *cache)
    log = tmp_path / "logs" / "mine-%j.out"
    stage.job = pipeline.Job("mine", "sfr-mine-mn", log, ["--nodes=2", "--ntasks-per-node=1", *ONE_CPU])
    env = cluster.env(proc_env())
    report = pipeline.submit([stage], tmp_path / "state.json", env=env)
    job = json.loads((tmp_path / "state.json").read_text())["mine"]
    assert report == [f"mine: submitted job {job}"]
    where = placement(cluster, f"--out {spread} ", 2, job)
    assert {r: w["SLURMD_NODENAME"] for r, w in where.items()} == {0: "node1", 1: "node2"}, where
    wait_until(lambda: finished(cluster, job), "the mining job", timeout=300, cluster=cluster)
    text = Path(str(log).replace("%j", job)).read_text()
    assert job_state(cluster, job) == "COMPLETED", text[-3000:]
    assert comp_nodes(cluster, job) == "node[1-2]"
    shards = re.findall(r"doc embeddings: (\d+) shards of up to 8, 0 were cached", text)
    assert shards and int(shards[0]) >= 2, text  # none cached: node2's rank encoded every other one
    assert spread.read_bytes() == local.read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} not present")
def test_eval_array_one_task_per_node(cluster, tmp_path):
    """``sfr-ds eval --slurm`` with --exclusive elements: the two elements run on different nodes
    at once; both finish, and the same data scores the same on both nodes."""
    sts = tmp_path / "sts.csv"
    lines = (SHARED_DATA / "stsbenchmark" / "sts-test.csv").read_text().splitlines(keepends=True)
    sts.write_text("".join(lines[:60]))
    out = tmp_path / "eval"
    env = cluster.env(proc_env())
    p = sfr_ds("eval", "builtin:minilm", "--tasks", f"sts:{sts}?name=OnA,sts:{sts}?name=OnB", "--slurm",
               "--sbatch", "--cpus-per-task=1 --exclusive", "--output-dir", out,
               "--cache-dir", tmp_path / "cache", env=env)  # fmt: skip
    job = p.stdout.split("submitted job ")[1].split(":")[0]
    assert "2 task(s) in 2 array element(s)" in p.stdout
    sfr_ds("eval", "collect", out, "--wait", "--poll", "1", "--timeout", "300", env=env, timeout=400)
    wait_until(lambda: not cluster.queue(), "the array to leave the queue", timeout=60, cluster=cluster)
    # the elements' own job ids are the array's id and the ids after it; nothing else runs now
    text = (cluster.root / "log" / "jobcomp.txt").read_text()
    fields = r"JobId=(\d+) .*?Name=sfr-eval-\S* JobState=(\S+) .*?"
    fields += r"StartTime=(\S+) EndTime=(\S+) NodeList=(\S+)"
    runs = re.findall(fields, text)
    runs = [r for r in runs if int(r[0]) >= int(job)]
    assert sorted(r[4] for r in runs) == ["node1", "node2"] and {r[1] for r in runs} == {"COMPLETED"}, text
    assert max(r[2] for r in runs) < min(r[3] for r in runs), runs  # they overlapped in time
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"OnA", "OnB"} and not summary["missing"]
    a, b = (json.loads((out / "status" / f"{n}.json").read_text())["score"] for n in ("OnA", "OnB"))
    assert a == b
