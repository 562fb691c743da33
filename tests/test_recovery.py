"""Recovery that works, and checkpoints that cannot run code: a run folder moved or copied resumes
where it lies; a damaged or tampered latest checkpoint gives way, with a warning naming the file,
to the newest one that reads safely; every such resume ends with the uninterrupted run's adapter,
bit for bit."""

import shutil

import pytest
import torch
import yaml
from bad_inputs import hashes
from conftest import TINY, sfr_ds, untimed_metrics
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

ARGS = [TINY, "optim.max_steps=4", "run.save_every=2"]  # checkpoints at steps 2 and 4
STATES = "checkpoints/step-00000004/mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    sfr_ds("train", *ARGS, "--output-dir", out)
    return out


def unfinished(straight, where):
    """The straight run as if stopped after its last checkpoint: no final adapter yet."""
    shutil.copytree(straight, where)
    shutil.rmtree(where / "final")
    return where


def assert_same_adapter(a, b):
    x, y = (load_file(d / "final" / "adapter_model.safetensors") for d in (a, b))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


class Payload:
    """What an attacker plants: unpickling it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_resuming_a_finished_run_does_nothing(straight, tmp_path):
    """A requeued finished job: --resume of a finished run says so, exits 0, changes nothing."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    before = hashes(run)
    assert "is finished" in sfr_ds("train", *ARGS, "--resume", "--output-dir", run).stdout
    assert hashes(run) == before


def test_a_moved_run_resumes_where_it_lies(straight, tmp_path):
    moved = unfinished(straight, tmp_path / "elsewhere" / "moved run")
    out = sfr_ds("train", "--resume", "--output-dir", moved).stdout
    assert "resumed from" in out and "at step 4" in out
    assert_same_adapter(straight, moved)
    assert untimed_metrics(moved) == untimed_metrics(straight)
    assert yaml.safe_load((moved / "run.yaml").read_text())["run"]["output_dir"] == str(moved)  # follows it


def test_a_pickle_payload_in_a_checkpoint_never_runs(straight, tmp_path):
    run = unfinished(straight, tmp_path / "run")
    marker = tmp_path / "PWNED"
    torch.save({"module": Payload(marker)}, run / STATES)
    out = sfr_ds("train", *ARGS, "--resume", "--output-dir", run).stdout
    assert not marker.exists(), "unpickling a checkpoint ran code"
    assert f"WARNING {run / STATES}: reading it would run code" in out
    assert "resuming from step-00000002" in out
    assert_same_adapter(straight, run)  # steps 3-4 redone from step 2: the same model


def test_a_truncated_latest_checkpoint_gives_way_to_the_previous_one(straight, tmp_path):
    run = unfinished(straight, tmp_path / "run")
    (run / STATES).write_bytes((run / STATES).read_bytes()[:1000])
    out = sfr_ds("train", *ARGS, "--resume", "--output-dir", run).stdout
    assert f"WARNING {run / STATES}: cannot be read" in out and "resuming from step-00000002" in out
    assert_same_adapter(straight, run)


def test_latest_naming_a_missing_checkpoint_gives_way_to_the_newest_complete_one(straight, tmp_path):
    run = unfinished(straight, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    out = sfr_ds("train", *ARGS, "--resume", "--output-dir", run).stdout
    assert "names 'step-00000004', which is missing" in out and "step-00000002" in out
    assert_same_adapter(straight, run)
