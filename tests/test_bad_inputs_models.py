"""A user's mistakes with model folders and checkpoints (``merge``, ``export``, ``mine --teacher
self:``) are refused in one clear message naming the file (and the checkpoint step), before any
work, leaving every file as it was; and no code planted in a checkpoint ever runs.

One tiny run (2 steps, a checkpoint at each) is trained once; each case damages its own copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from bad_inputs import refused
from conftest import TINY, sfr_ds

pytestmark = pytest.mark.integration

STEP = "step-00000002"
MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
RECORD = {
    "query": "capital of australia",
    "pos": ["Canberra is the capital of Australia."],
    "neg": ["Paris is the capital of France."],
    "task_type": "retrieval",
    "dataset": "geo",
    "instruction": "Retrieve",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run every case copies: tiny random Mistral with LoRA, checkpoints at steps 1 and 2."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    sfr_ds("train", TINY, "optim.max_steps=2", "run.save_every=1", "--output-dir", run)
    return run


def truncate(path: Path) -> Path:
    """Cut the file to half its length, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def overwrite(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def edit_json(path: Path, **changes) -> Path:
    return overwrite(path, json.dumps({**json.loads(path.read_text()), **changes}))


class Payload:
    """Unpickled by a plain ``torch.load``, this creates ``marker``: the code a hostile file runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path) -> Path:
    torch.save({"module": {"w": torch.zeros(2)}, "payload": Payload(marker)}, path)
    return path


Case = Callable[[Path, Path], tuple[list, list]]  # (folder, run copy) -> (command line, what it must say)
CASES: dict[str, Case] = {}


def case(f: Case) -> Case:
    CASES[f.__name__] = f
    return f


def merge(run: Path, t: Path, *extra) -> list:
    return ["merge", run, "--out", t / "merged", *extra]


def export(target: Path, t: Path) -> list:
    return ["export", target, "--out", t / "adapter"]


def mine_self(run: Path, t: Path, *extra) -> list:
    train = overwrite(t / "train.jsonl", json.dumps(RECORD) + "\n")
    return [
        "mine",
        train,
        "--corpus",
        "from-records",
        "--teacher",
        f"self:{run}",
        "--out",
        t / "o.jsonl",
        *extra,
    ]


# --- merge ----------------------------------------------------------------------------------------


@case
def merge_source_not_a_model_folder(t, run):
    (t / "empty").mkdir()
    return merge(t / "empty", t), [f"{t / 'empty'}: no sfr_ds.json"]


@case
def merge_source_is_a_file(t, run):
    return merge(run / "run.yaml", t), ["run.yaml", "is a file"]


@case
def merge_source_missing(t, run):
    return merge(t / "nowhere", t), ["nowhere", "does not exist"]


@case
def merge_meta_truncated(t, run):
    meta = truncate(run / "final" / "sfr_ds.json")
    return merge(run, t), [f"{meta}: cannot be read"]


@case
def merge_meta_not_an_object(t, run):
    meta = overwrite(run / "final" / "sfr_ds.json", "[1, 2]")
    return merge(run, t), [f"{meta}: expected a JSON object"]


@case
def merge_meta_without_pooling(t, run):
    meta = run / "final" / "sfr_ds.json"
    overwrite(meta, json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "pooling"}))
    return merge(run, t), [f"{meta}: lacks ['pooling']"]


@case
def merge_adapter_config_truncated(t, run):
    config = truncate(run / "final" / "adapter_config.json")
    return merge(run, t), [f"{config}: cannot be read (not valid JSON"]


@case
def merge_adapter_config_missing(t, run):
    (run / "final" / "adapter_config.json").unlink()
    return merge(run, t), [f"{run / 'final' / 'adapter_config.json'}: missing"]


@case
def merge_adapter_weights_truncated(t, run):
    weights = truncate(run / "final" / "adapter_model.safetensors")
    return merge(run, t), [f"{weights}: "]


@case
def merge_adapter_weights_missing(t, run):
    (run / "final" / "adapter_model.safetensors").unlink()
    return merge(run, t), [f"{run / 'final' / 'adapter_model.safetensors'}: missing"]


@case
def merge_adapter_weights_not_safetensors(t, run):
    weights = overwrite(
        run / "final" / "adapter_model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00not json"
    )
    return merge(run, t), [f"{weights}: not a safetensors file"]


@case
def merge_adapter_weights_cut_inside_the_data(t, run):
    weights = run / "final" / "adapter_model.safetensors"
    overwrite(weights, weights.read_bytes()[:-100])
    return merge(run, t), [f"{weights}: holds", "truncated"]


@case
def merge_tokenizer_truncated(t, run):
    tokenizer = truncate(run / "final" / "tokenizer.json")
    return merge(run, t), [f"{tokenizer}: cannot be read (not valid JSON"]


@case
def merge_base_model_gone(t, run):
    shutil.rmtree(run / "base_model")
    return merge(run, t), ["base_model", "is gone"]


@case
def merge_base_weights_truncated(t, run):
    weights = truncate(run / "base_model" / "model.safetensors")
    return merge(run, t), [f"{weights}: "]


@case
def merge_base_config_truncated(t, run):
    config = truncate(run / "base_model" / "config.json")
    return merge(run, t), [f"{config}: cannot be read (not valid JSON"]


@case
def merge_base_not_a_folder(t, run):
    meta = edit_json(run / "final" / "sfr_ds.json", random_init=None, base_model=str(t / "no-base"))
    return merge(run, t), [f"{meta}: its base model", "no-base", "is not a folder"]


@case
def merge_unknown_builtin_base(t, run):
    meta = edit_json(run / "final" / "sfr_ds.json", random_init=None, base_model="builtin:nope")
    return merge(run, t), [f"{meta}: base_model: unknown built-in model 'builtin:nope'"]


@case
def merge_out_not_empty(t, run):
    (t / "out").mkdir()
    overwrite(t / "out" / "keep.txt", "mine")
    return ["merge", run, "--out", t / "out"], [f"{t / 'out'} exists and is not this adapter's merge"]


@case
def merge_out_is_a_file(t, run):
    overwrite(t / "merged", "a file")
    return merge(run, t), ["merged", "is a file"]


@case
def merge_max_shard_size_not_a_size(t, run):
    return merge(run, t, "--max-shard-size", "abc"), ["--max-shard-size", "'abc' is not a size"]


@case
def merge_max_shard_size_zero(t, run):
    return merge(run, t, "--max-shard-size", "0GB"), ["--max-shard-size", "'0GB' is not a size"]


@case
def merge_negative_tolerance(t, run):
    return merge(run, t, "--tolerance", "-1"), ["--tolerance", "-1"]


@case
def merge_unknown_dtype(t, run):
    return merge(run, t, "--dtype", "fp16"), ["--dtype", "'fp16'"]


# --- export ---------------------------------------------------------------------------------------


@case
def export_not_a_checkpoint(t, run):
    return export(run / "final", t), [f"{run / 'final'}: not a complete sfr-ds checkpoint"]


@case
def export_without_latest(t, run):
    (run / "checkpoints" / "latest").unlink()
    return export(run, t), [f"{run / 'checkpoints'}: no complete checkpoint"]


@case
def export_latest_names_a_missing_step(t, run):
    overwrite(run / "checkpoints" / "latest", "step-00000009")
    return export(run, t), [f"{run / 'checkpoints' / 'latest'} names 'step-00000009'"]


@case
def export_incomplete_step(t, run):
    (run / "checkpoints" / STEP / "complete.json").unlink()
    return export(run / "checkpoints" / STEP, t), [f"{run / 'checkpoints' / STEP}: not a complete"]


@case
def export_run_yaml_missing(t, run):
    (run / "run.yaml").unlink()
    return export(run, t), [f"{run}: no run.yaml"]


@case
def export_run_yaml_broken(t, run):
    config = overwrite(run / "run.yaml", "model:\n  name_or_path: [x\nlora: {}\n")
    return export(run, t), [f"{config}:"]


@case
def export_run_yaml_bad_field(t, run):
    config = run / "run.yaml"
    overwrite(config, config.read_text().replace("r: 8", "r: eight"))
    return export(run, t), [f"{config}: ", "lora.r"]


@case
def export_run_without_lora(t, run):
    config = run / "run.yaml"
    overwrite(config, config.read_text().replace("enabled: true", "enabled: false", 1))
    return export(run, t), ["trained without LoRA"]


@case
def export_base_model_gone(t, run):
    shutil.rmtree(run / "base_model")
    return export(run, t), [f"{run / 'base_model'}: the random-init base model", "is gone"]


@case
def export_model_states_truncated(t, run):
    states = truncate(run / "checkpoints" / STEP / MODEL_STATES)
    return export(run, t), [f"{states}: cannot be read", "checkpoint step 2"]


@case
def export_model_states_empty(t, run):
    states = overwrite(run / "checkpoints" / STEP / MODEL_STATES, b"")
    return export(run, t), [f"{states}: cannot be read", "checkpoint step 2"]


@case
def export_model_states_not_torch(t, run):
    states = overwrite(run / "checkpoints" / STEP / MODEL_STATES, "not a checkpoint\n" * 50)
    return export(run, t), [f"{states}: cannot be read", "checkpoint step 2"]


@case
def export_model_states_missing(t, run):
    (run / "checkpoints" / STEP / MODEL_STATES).unlink()
    return export(run, t), [f"{run / 'checkpoints' / STEP}: no DeepSpeed *model_states.pt"]


@case
def export_model_states_not_deepspeed(t, run):
    torch.save({"module": {"w": torch.zeros(2)}}, run / "checkpoints" / STEP / MODEL_STATES)
    return export(run, t), [f"{run / 'checkpoints' / STEP}: not a checkpoint sfr-ds wrote", "step 2"]


@case
def export_model_states_mis_shaped(t, run):
    path = run / "checkpoints" / STEP / MODEL_STATES
    states = torch.load(path, weights_only=False)  # our own file
    name = next(iter(states["module"]))
    states["module"][name] = torch.zeros(1)
    torch.save(states, path)
    return export(run, t), [f"{run / 'checkpoints' / STEP}: ZeRO-2 checkpoint gave 1 of"]


@case
def export_optim_states_truncated(t, run):
    states = truncate(run / "checkpoints" / "step-00000001" / OPTIM_STATES)
    return export(run / "checkpoints" / "step-00000001", t), [
        f"{states}: cannot be read",
        "checkpoint step 1",
    ]


@case
def export_rng_state_truncated(t, run):
    rng = truncate(run / "checkpoints" / STEP / "rng_rank00000.pt")
    return export(run, t), [f"{rng}: cannot be read", "checkpoint step 2"]


@case
def export_out_not_empty(t, run):
    (t / "adapter").mkdir()
    overwrite(t / "adapter" / "keep.txt", "mine")
    return export(run, t), [f"{t / 'adapter'} exists and is not empty"]


@case
def export_out_is_a_file(t, run):
    overwrite(t / "adapter", "a file")
    return export(run, t), ["adapter", "is a file"]


@case
def export_checkpoint_missing(t, run):
    return export(run / "checkpoints" / "step-00000007", t), ["step-00000007", "does not exist"]


# --- mine with one of our runs as the teacher ------------------------------------------------------


@case
def mine_self_meta_truncated(t, run):
    meta = truncate(run / "final" / "sfr_ds.json")
    return mine_self(run, t), [f"{meta}: cannot be read"]


@case
def mine_self_adapter_config_truncated(t, run):
    config = truncate(run / "final" / "adapter_config.json")
    return mine_self(run, t), [f"{config}: cannot be read (not valid JSON"]


@case
def mine_self_adapter_weights_truncated(t, run):
    weights = truncate(run / "final" / "adapter_model.safetensors")
    return mine_self(run, t), [f"{weights}: "]


@case
def mine_self_tokenizer_truncated(t, run):
    tokenizer = truncate(run / "final" / "tokenizer.json")
    return mine_self(run, t), [f"{tokenizer}: cannot be read (not valid JSON"]


@case
def mine_self_base_model_gone(t, run):
    shutil.rmtree(run / "base_model")
    return mine_self(run, t), ["base_model", "is gone"]


@case
def mine_self_base_weights_truncated(t, run):
    weights = truncate(run / "base_model" / "model.safetensors")
    return mine_self(run, t), [f"{weights}: "]


@case
def mine_self_other_pooling(t, run):
    return mine_self(run, t, "--pooling", "mean"), [f"{run / 'final'} was trained with last pooling"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_commands_refuse(name, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run, symlinks=True)
    args, says = CASES[name](tmp_path, run)
    p = refused(*args, where=tmp_path, says=says)
    errors = [line for line in p.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, p.stderr
    for out in ("merged", "adapter", "o.jsonl"):  # nothing written, not even a half-built folder
        assert not (tmp_path / f"{out}.partial").exists()
        assert not (tmp_path / out).exists() or (tmp_path / out).is_file() or any((tmp_path / out).iterdir())


# --- no code runs from a checkpoint ---------------------------------------------------------------


def test_the_planted_payload_is_live(tmp_path):
    """The payload the next test plants does run under a plain ``torch.load``: the test is real."""
    marker = tmp_path / "ran"
    torch.load(plant(tmp_path / "payload.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("victim", [MODEL_STATES, OPTIM_STATES])
def test_export_never_runs_code_planted_in_a_checkpoint(victim, trained, tmp_path):
    """A pickle payload in the model states (read by every export) or in the optimizer states (which a
    ZeRO-2 export does not even need) is refused in one line naming the file; it never runs."""
    run = tmp_path / "run"
    shutil.copytree(trained, run, symlinks=True)
    marker = tmp_path / "pwned"
    planted = plant(run / "checkpoints" / STEP / victim, marker)
    p = refused(
        *export(run, tmp_path),
        where=tmp_path,
        says=[f"Error: {planted}: reading it would run code", "checkpoint step 2"],
    )
    assert not marker.exists(), "the payload ran"
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "adapter.partial").exists()


def test_export_into_an_empty_folder_then_never_over_it(trained, tmp_path):
    """``--out`` may be an empty folder (export builds aside and renames into it); a second export
    into it is refused, leaving the first as it was."""
    out = tmp_path / "adapter"
    out.mkdir()
    sfr_ds("export", trained, "--out", out)
    assert {"adapter_model.safetensors", "adapter_config.json", "sfr_ds.json"} <= {
        f.name for f in out.iterdir()
    }
    assert not (tmp_path / "adapter.partial").exists()
    refused("export", trained, "--out", out, where=tmp_path, says=[f"{out} exists and is not empty"])


def test_count_of_bad_inputs():
    assert len(CASES) + 2 >= 45
