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


def merge(run: Path, t: Path, *extra, out: Path | None = None) -> list:
    return ["merge", run, "--out", out or t / "merged", *extra]


def export(target: Path, t: Path, out: Path | None = None) -> list:
    return ["export", target, "--out", out or t / "adapter"]


def mine_self(run: Path, t: Path, *extra) -> list:
    train = overwrite(t / "train.jsonl", json.dumps(RECORD) + "\n")
    teacher = ["--corpus", "from-records", "--teacher", f"self:{run}"]
    return ["mine", train, *teacher, "--out", t / "o.jsonl", *extra]


def made(folder: Path) -> Path:
    folder.mkdir()
    return folder


def not_empty(folder: Path) -> Path:
    """``folder``, made to hold one file of the user's."""
    overwrite(made(folder) / "keep.txt", "mine")
    return folder


def a_file(path: Path) -> Path:
    return overwrite(path, "a file")


def says(needles: list[str], **paths: Path) -> list[str]:
    """``needles`` with ``{t}``, ``{run}``, ``{step}`` and ``{path}`` replaced by the case's paths."""
    return [needle.format(**paths) for needle in needles]


# --- what a command line gets wrong (the run copy is as trained) -----------------------------------

# a wrong model, checkpoint or pooling to read: name -> (folder, run copy) -> (command line, message)
CASES: dict[str, Case] = {
    "merge_source_not_a_model_folder": lambda t, run: (
        merge(made(t / "empty"), t),
        [f"{t}/empty: no sfr_ds.json"],
    ),
    "merge_source_is_a_file": lambda t, run: (merge(run / "run.yaml", t), ["run.yaml", "is a file"]),
    "merge_source_missing": lambda t, run: (merge(t / "nowhere", t), ["nowhere", "does not exist"]),
    "export_not_a_checkpoint": lambda t, run: (
        export(run / "final", t),
        [f"{run}/final: not a complete sfr-ds checkpoint"],
    ),
    "export_checkpoint_missing": lambda t, run: (
        export(run / "checkpoints" / "step-00000007", t),
        ["step-00000007", "does not exist"],
    ),
    "mine_self_other_pooling": lambda t, run: (
        mine_self(run, t, "--pooling", "mean"),
        [f"{run}/final was trained with last pooling"],
    ),
}
# --out already taken by the user's files: name -> (command, --out in the folder, what is there, message)
OUT_TAKEN = {
    "merge_out_not_empty": (merge, "out", not_empty, ["{t}/out exists and is not this adapter's merge"]),
    "merge_out_is_a_file": (merge, "merged", a_file, ["merged", "is a file"]),
    "export_out_not_empty": (export, "adapter", not_empty, ["{t}/adapter exists and is not empty"]),
    "export_out_is_a_file": (export, "adapter", a_file, ["adapter", "is a file"]),
}
# merge with a bad option: name -> (the option and its value, what the message says)
MERGE_OPTIONS = {
    "max_shard_size_not_a_size": (("--max-shard-size", "abc"), ["--max-shard-size", "'abc' is not a size"]),
    "max_shard_size_zero": (("--max-shard-size", "0GB"), ["--max-shard-size", "'0GB' is not a size"]),
    "negative_tolerance": (("--tolerance", "-1"), ["--tolerance", "-1"]),
    "unknown_dtype": (("--dtype", "fp16"), ["--dtype", "'fp16'"]),
}


def merge_with(option: tuple[str, str], needles: list[str]) -> Case:
    return lambda t, run: (merge(run, t, *option), needles)


def out_taken(
    command: Callable[..., list], out: str, make: Callable[[Path], Path], needles: list[str]
) -> Case:
    return lambda t, run: (command(run, t, out=make(t / out)), says(needles, t=t))


CASES.update({f"merge_{name}": merge_with(*mistake) for name, mistake in MERGE_OPTIONS.items()})
CASES.update({name: out_taken(*mistake) for name, mistake in OUT_TAKEN.items()})


def case(f: Case) -> Case:
    CASES[f.__name__] = f
    return f


@case
def export_incomplete_step(t, run):
    (run / "checkpoints" / STEP / "complete.json").unlink()
    return export(run / "checkpoints" / STEP, t), [f"{run / 'checkpoints' / STEP}: not a complete"]


@case
def export_optim_states_truncated(t, run):
    states = truncate(run / "checkpoints" / "step-00000001" / OPTIM_STATES)
    return export(run / "checkpoints" / "step-00000001", t), [
        f"{states}: cannot be read",
        "checkpoint step 1",
    ]


# --- one file of the run damaged ------------------------------------------------------------------


def unlink(path: Path) -> None:
    path.unlink()


def replaced_by(data: str | bytes) -> Callable[[Path], Path]:
    return lambda path: overwrite(path, data)


def edited(old: str, new: str, count: int = -1) -> Callable[[Path], Path]:
    return lambda path: overwrite(path, path.read_text().replace(old, new, count))


def cut_end(n: int) -> Callable[[Path], Path]:
    """Drop the last ``n`` bytes: a file whose header is whole but whose data is not."""
    return lambda path: overwrite(path, path.read_bytes()[:-n])


def without_key(key: str) -> Callable[[Path], Path]:
    return lambda path: overwrite(
        path, json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != key})
    )


def with_base(base: Callable[[Path], str]) -> Callable[[Path], Path]:
    """sfr_ds.json naming ``base(its path)`` as the base model instead of the run's own random init."""
    return lambda meta: edit_json(meta, random_init=None, base_model=base(meta))


def save_module_only(path: Path) -> None:
    torch.save({"module": {"w": torch.zeros(2)}}, path)


def mis_shape(path: Path) -> None:
    """One tensor of the model states replaced by one of another shape."""
    states = torch.load(path, weights_only=False)  # our own file
    name = next(iter(states["module"]))
    states["module"][name] = torch.zeros(1)
    torch.save(states, path)


Damage = tuple[Callable[[Path], object], str, list[str]]  # (what is done, to which file of the run, message)
META, ADAPTER_CONFIG, TOKENIZER = "final/sfr_ds.json", "final/adapter_config.json", "final/tokenizer.json"
ADAPTER_WEIGHTS = "final/adapter_model.safetensors"
CHECKPOINT = f"checkpoints/{STEP}"
STATES = f"{CHECKPOINT}/{MODEL_STATES}"
NOT_SAFETENSORS = b"\x08\x00\x00\x00\x00\x00\x00\x00not json"  # an 8-byte header that is not JSON

# the final model and its base, read by merge and by mine --teacher self:
FINAL_DAMAGES: dict[str, Damage] = {
    "meta_truncated": (truncate, META, ["{path}: cannot be read"]),
    "meta_not_an_object": (replaced_by("[1, 2]"), META, ["{path}: expected a JSON object"]),
    "meta_without_pooling": (without_key("pooling"), META, ["{path}: lacks ['pooling']"]),
    "adapter_config_truncated": (truncate, ADAPTER_CONFIG, ["{path}: cannot be read (not valid JSON"]),
    "adapter_config_missing": (unlink, ADAPTER_CONFIG, ["{path}: missing"]),
    "adapter_weights_truncated": (truncate, ADAPTER_WEIGHTS, ["{path}: "]),
    "adapter_weights_missing": (unlink, ADAPTER_WEIGHTS, ["{path}: missing"]),
    "adapter_weights_not_safetensors": (
        replaced_by(NOT_SAFETENSORS),
        ADAPTER_WEIGHTS,
        ["{path}: not a safetensors file"],
    ),
    "adapter_weights_cut_inside_the_data": (cut_end(100), ADAPTER_WEIGHTS, ["{path}: holds", "truncated"]),
    "tokenizer_truncated": (truncate, TOKENIZER, ["{path}: cannot be read (not valid JSON"]),
    "base_model_gone": (shutil.rmtree, "base_model", ["base_model", "is gone"]),
    "base_weights_truncated": (truncate, "base_model/model.safetensors", ["{path}: "]),
    "base_config_truncated": (truncate, "base_model/config.json", ["{path}: cannot be read (not valid JSON"]),
    "base_not_a_folder": (
        with_base(lambda meta: str(meta.parents[2] / "no-base")),  # beside the run, and missing
        META,
        ["{path}: its base model", "no-base", "is not a folder"],
    ),
    "unknown_builtin_base": (
        with_base(lambda meta: "builtin:nope"),
        META,
        ["{path}: base_model: unknown built-in model 'builtin:nope'"],
    ),
}
# the run's checkpoints and run.yaml, read by export
CHECKPOINT_DAMAGES: dict[str, Damage] = {
    "without_latest": (unlink, "checkpoints/latest", ["{run}/checkpoints: no complete checkpoint"]),
    "latest_names_a_missing_step": (
        replaced_by("step-00000009"),
        "checkpoints/latest",
        ["{path} names 'step-00000009'"],
    ),
    "run_yaml_missing": (unlink, "run.yaml", ["{run}: no run.yaml"]),
    "run_yaml_broken": (replaced_by("model:\n  name_or_path: [x\nlora: {}\n"), "run.yaml", ["{path}:"]),
    "run_yaml_bad_field": (edited("r: 8", "r: eight"), "run.yaml", ["{path}: ", "lora.r"]),
    "run_without_lora": (edited("enabled: true", "enabled: false", 1), "run.yaml", ["trained without LoRA"]),
    "base_model_gone": (shutil.rmtree, "base_model", ["{path}: the random-init base model", "is gone"]),
    "model_states_truncated": (truncate, STATES, ["{path}: cannot be read", "checkpoint step 2"]),
    "model_states_empty": (replaced_by(b""), STATES, ["{path}: cannot be read", "checkpoint step 2"]),
    "model_states_not_torch": (
        replaced_by("not a checkpoint\n" * 50),
        STATES,
        ["{path}: cannot be read", "checkpoint step 2"],
    ),
    "model_states_missing": (unlink, STATES, ["{step}: no DeepSpeed *model_states.pt"]),
    "model_states_not_deepspeed": (
        save_module_only,
        STATES,
        ["{step}: not a checkpoint sfr-ds wrote", "step 2"],
    ),
    "model_states_mis_shaped": (mis_shape, STATES, ["{step}: ZeRO-2 checkpoint gave 1 of"]),
    "rng_state_truncated": (
        truncate,
        f"{CHECKPOINT}/rng_rank00000.pt",
        ["{path}: cannot be read", "checkpoint step 2"],
    ),
}


def damaged(damage: Damage, command: Callable[[Path, Path], list]) -> Case:
    """The case: damage one file of the run, then give the run to ``command``."""
    spoil, file, needles = damage

    def build(t: Path, run: Path) -> tuple[list, list]:
        spoil(run / file)
        return command(run, t), says(needles, t=t, run=run, step=run / CHECKPOINT, path=run / file)

    return build


for name, damage in FINAL_DAMAGES.items():
    CASES[f"merge_{name}"] = damaged(damage, merge)
    CASES[f"mine_self_{name}"] = damaged(damage, mine_self)
CASES.update({f"export_{name}": damaged(damage, export) for name, damage in CHECKPOINT_DAMAGES.items()})


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_commands_refuse(name, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run, symlinks=True)
    args, needles = CASES[name](tmp_path, run)
    p = refused(*args, where=tmp_path, says=needles)
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
