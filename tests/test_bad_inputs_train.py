"""Bad inputs to `sfr-ds train` (configs, overrides, DeepSpeed JSON, the command line, run folders),
`sfr-ds ablate`, `sfr-ds rounds`, `sfr-ds demo` and the Slurm scripts: each refused in one clean
message naming the file and line or field, with every file that was there left as it was.

Almost every case fails before torch is imported; the run-folder cases share one tiny run."""

import json
import shutil
import subprocess

import pytest
import yaml
from bad_inputs import refused
from conftest import ROOT, TINY, sfr_ds

pytestmark = pytest.mark.integration

TINY_CFG = yaml.safe_load(TINY.read_text())
DATA = ROOT / "sfr_ds" / "resources" / "data" / "tiny.jsonl"


def merged(**sections) -> str:
    """configs/tiny.yaml with ``sections`` merged in, as YAML text."""
    data = json.loads(json.dumps(TINY_CFG))
    for name, fields in sections.items():
        if isinstance(fields, dict) and isinstance(data.get(name), dict):
            data[name].update(fields)
        else:
            data[name] = fields
    return yaml.safe_dump(data)


def write(path, text) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def train(tmp, *args):
    return ("train", *args, "--output-dir", tmp / "run")


def refused_train(tmp, args, says):
    refused(*train(tmp, *args), where=tmp, says=says)
    assert not (tmp / "run").exists(), "a refused run must not create its folder"


TINY_TEXT = TINY.read_text()
# The config file's own text: YAML mistakes, named by file and line.
TEXT_CASES = {
    "yaml syntax": ("model: {pooling: last\ndata: 1\n", ["c.yaml:2"]),
    "tab indent": (TINY_TEXT.replace("  pooling", "\tpooling"), ["c.yaml:", "tabs"]),
    "repeated key": (TINY_TEXT + "lora:\n  r: 4\n", ["c.yaml:", "'lora' repeated"]),
    "top level list": ("- model\n- data\n", ["c.yaml", "mapping of sections"]),
    "config not utf-8": (b"model:\n  pooling: \xff\n", ["c.yaml", "UTF-8"]),
}
# configs/tiny.yaml with one section changed: each bad field named, with what it must be.
FIELD_CASES = {
    "unknown section": ({"modle": {"x": 1}}, ["unknown field 'modle'", "'model'"]),
    "unknown field": ({"data": {"hard_negs": 3}}, ["'data.hard_negs'", "hard_negatives"]),
    "wrong type": ({"data": {"global_batch_size": "many"}}, ["'data.global_batch_size'"]),
    "bad literal": ({"model": {"pooling": "max"}}, ["'model.pooling'", "'last'"]),
    "section not mapping": ({"model": 5}, ["'model' must be a mapping"]),
    "batch zero": ({"data": {"global_batch_size": 0}}, ["'data.global_batch_size'"]),
    "negatives negative": ({"data": {"hard_negatives": -1}}, ["'data.hard_negatives'"]),
    "query len 1": ({"data": {"query_max_len": 1}}, ["'data.query_max_len'"]),
    "doc len 0": ({"data": {"doc_max_len": 0}}, ["'data.doc_max_len'"]),
    "weights negative": ({"data": {"dataset_weights": {"scifact": -1}}}, ["'data.dataset_weights.scifact'"]),
    "weights unknown dataset": ({"data": {"dataset_weights": {"nosuch": 2}}}, ["dataset_weights", "nosuch"]),
    "short negatives policy": ({"data": {"short_negatives": "drop"}}, ["'data.short_negatives'"]),
    "homogeneous scope": ({"data": {"homogeneous_scope": "node"}}, ["'data.homogeneous_scope'", "'rank'"]),
    "rank scope, not homogeneous": (
        {"data": {"homogeneous": False, "homogeneous_scope": "rank"}},
        ["'data.homogeneous_scope: rank' needs data.homogeneous=true"],
    ),
    "temperature zero": ({"loss": {"temperature": 0}}, ["'loss.temperature'"]),
    "matryoshka dims not numbers": ({"loss": {"matryoshka_dims": ["all"]}}, ["'loss.matryoshka_dims'"]),
    "matryoshka dim twice": ({"loss": {"matryoshka_dims": [64, 64]}}, ["'loss.matryoshka_dims'", "twice"]),
    "matryoshka weights short": (
        {"loss": {"matryoshka_dims": [64, 32], "matryoshka_weights": [1]}},
        ["'loss.matryoshka_weights'", "one weight per dimension"],
    ),
    "matryoshka wider than model": (
        {"loss": {"matryoshka_dims": [128, 32]}},
        ["'loss.matryoshka_dims': [128] exceed the model's embedding width (64)"],
    ),
    "chunk tokens short": (
        {"gradcache": {"packing": True, "chunk_tokens": 16}},
        ["'gradcache.chunk_tokens' (16)"],
    ),
    "packing without gradcache": (
        {"gradcache": {"packing": True, "enabled": False}},
        ["needs gradcache.enabled"],
    ),
    "chunk size zero": ({"gradcache": {"chunk_size": 0}}, ["'gradcache.chunk_size'"]),
    "lr zero": ({"optim": {"lr": 0}}, ["'optim.lr'"]),
    "lr text": ({"optim": {"lr": "fast"}}, ["'optim.lr' must be float"]),
    "betas three": ({"optim": {"betas": [0.9, 0.99, 0.9]}}, ["'optim.betas'"]),
    "betas text": ({"optim": {"betas": ["a", "b"]}}, ["'optim.betas' must be two numbers"]),
    "warmup negative": ({"optim": {"warmup_steps": -5}}, ["'optim.warmup_steps'"]),
    "epochs zero": ({"optim": {"epochs": 0}}, ["'optim.epochs'"]),
    "max steps zero": ({"optim": {"max_steps": 0}}, ["'optim.max_steps'"]),
    "clip negative": ({"optim": {"grad_clip": -1}}, ["'optim.grad_clip'"]),
    "lora r zero": ({"lora": {"r": 0}}, ["'lora.r'"]),
    "lora dropout one": ({"lora": {"dropout": 1.0}}, ["'lora.dropout'"]),
    "save every zero": ({"run": {"save_every": 0}}, ["'run.save_every'"]),
    "keep zero": ({"run": {"keep_checkpoints": 0}}, ["'run.keep_checkpoints'"]),
    "timeout zero": ({"run": {"dist_timeout_s": 0}}, ["'run.dist_timeout_s'"]),
    "nonfinite policy": ({"run": {"on_nonfinite": "ignore"}}, ["'run.on_nonfinite'"]),
    "random init no type": ({"model": {"random_init": {"hidden_size": 8}}}, ["needs a 'model_type'"]),
    "dtype fp16": ({"model": {"dtype": "fp16"}}, ["'model.dtype'"]),
    "every problem at once": ({"lora": {"r": 0}, "optim": {"lr": 0}}, ["'lora.r'", "'optim.lr'"]),
    "train files empty": ({"data": {"train_files": []}}, ["'data.train_files' is empty"]),
    "train file not a path": ({"data": {"train_files": [1]}}, ["'data.train_files' must be a list of paths"]),
    "train file twice": ({"data": {"train_files": [str(DATA), str(DATA)]}}, [f"lists {DATA} twice"]),
}
# The DeepSpeed JSON that deepspeed.config names: checked before any model is built.
DS_CASES = {
    "ds invalid json": ("{\n  bf16: 1\n}", ["ds.json:2", "not valid JSON"]),
    "ds not object": ("[1, 2]", ["ds.json", "JSON object"]),
    "ds not utf-8": (b"{\xff}", ["ds.json", "UTF-8"]),
    "ds stage 5": (
        {"zero_optimization": {"stage": 5}},
        ["'zero_optimization.stage' must be 0, 1, 2 or 3, got 5"],
    ),
    "ds stage text": ({"zero_optimization": {"stage": "two"}}, ["ds.json", "'zero_optimization.stage'"]),
    "ds bf16 mismatch": (
        {"bf16": {"enabled": True}},
        ["ds.json", "bf16.enabled=True but model.dtype='fp32'"],
    ),
    "ds bf16 not bool": ({"bf16": {"enabled": "yes"}}, ["ds.json", "'bf16.enabled' must be true or false"]),
    "ds sets optimizer": ({"optimizer": {"type": "Adam"}}, ["ds.json", "remove 'optimizer'"]),
    "ds sets batch": (
        {"train_batch_size": 8},
        ["ds.json", "remove 'train_batch_size'", "data.global_batch_size"],
    ),
}
# Arguments after configs/tiny.yaml: overrides and options.
ARG_CASES = {
    "override without =": (["optim.lr"], ["'optim.lr' is not of the form key=value"]),
    "override bad yaml": (["data.train_files=[a"], ["data.train_files=[a", "not valid YAML"]),
    "override empty key": (["=5"], ["the key before '=' must be section.field"]),
    "override into a value": (["optim.lr.x=1"], ["'lr' is not a section"]),
    "override unknown field": (["optim.rate=1"], ["unknown field 'optim.rate'"]),
    "override wrong type": (["lora.r=eight"], ["'lora.r' must be int"]),
    "nproc negative": (["--nproc-per-node", "-1"], ["--nproc-per-node", "-1"]),
    "nproc zero": (["--nproc-per-node", "0"], ["--nproc-per-node"]),
    "nproc text": (["--nproc-per-node", "two"], ["--nproc-per-node", "two"]),
    "batch not divisible": (
        ["--nproc-per-node", "3"],
        ["data.global_batch_size=8 is not divisible by the 3 ranks"],
    ),
}
# Paths that are missing, folders, or files where folders belong.
PATH_CASES = {
    "config missing": lambda t: (train(t, t / "none.yaml"), [t / "none.yaml", "no such file"]),
    "config is a folder": lambda t: (train(t, t), [str(t), "is a folder"]),
    "train file missing": lambda t: (train(t, TINY, f"data.train_files=[{t}/no.jsonl]"), [f"{t}/no.jsonl"]),
    "train file is a folder": lambda t: (train(t, TINY, f"data.train_files=[{t}]"), [f"{t} is a folder"]),
    "ds missing": lambda t: (
        train(t, TINY, f"deepspeed.config={t / 'no.json'}"),
        [t / "no.json", "not found"],
    ),
    "ds is a folder": lambda t: (train(t, TINY, f"deepspeed.config={t}"), [f"{t} is a folder"]),
    "no config": lambda t: (("train", "--output-dir", t / "run"), ["give a CONFIG"]),
    "resume without folder": lambda t: (("train", "--resume"), ["give a CONFIG"]),
    "resume a non-run": lambda t: (("train", "--resume", "--output-dir", t), [f"{t} has no run.yaml"]),
    "output dir is a file": lambda t: (("train", TINY, "--output-dir", DATA), ["--output-dir", str(DATA)]),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_config_text_refused(case, tmp_path):
    text, says = TEXT_CASES[case]
    refused_train(tmp_path, [write(tmp_path / "c.yaml", text)], says)


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_config_field_refused(case, tmp_path):
    sections, says = FIELD_CASES[case]
    refused_train(tmp_path, [write(tmp_path / "c.yaml", merged(**sections))], says)


@pytest.mark.parametrize("case", list(DS_CASES))
def test_deepspeed_json_refused(case, tmp_path):
    content, says = DS_CASES[case]
    text = content if isinstance(content, (str, bytes)) else json.dumps(content)
    refused_train(tmp_path, [TINY, f"deepspeed.config={write(tmp_path / 'ds.json', text)}"], says)


@pytest.mark.parametrize("case", list(ARG_CASES))
def test_arguments_refused(case, tmp_path):
    args, says = ARG_CASES[case]
    refused_train(tmp_path, [TINY, *args], says)


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_paths_refused(case, tmp_path):
    args, says = PATH_CASES[case](tmp_path)
    refused(*args, where=tmp_path, says=says)
    assert not (tmp_path / "run").exists(), "a refused run must not create its folder"


# ----------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny run of 4 steps, checkpoints at 2 and 4 (one rank)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    sfr_ds("train", TINY, "optim.max_steps=4", "run.save_every=2", "--output-dir", out)
    return out


def copy_of(run, tmp_path, remove=()):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    for name in remove:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return out


RUN_ARGS = [TINY, "optim.max_steps=4", "run.save_every=2"]
RUN_CASES = {
    # a fresh start into a finished run, or into one with checkpoints
    "fresh into finished": ((), (), ["holds a finished run"]),
    "fresh into checkpoints": (("final",), (), ["pass --resume"]),
    # --resume with other settings
    "resume other config": (("final",), ("--resume", "optim.lr=0.5"), ["optim.lr (0.001 -> 0.5)"]),
    # state but no checkpoint to resume from: training again would overwrite it
    "checkpoints pruned": (
        ("final", "checkpoints"),
        ("--resume",),
        ["metrics.jsonl", "no complete checkpoint"],
    ),
    "final without metadata": (
        ("final/sfr_ds.json", "checkpoints"),
        ("--resume",),
        ["final/", "no complete"],
    ),
    "checkpoints emptied": (
        ("final", "checkpoints/step-00000002", "checkpoints/step-00000004"),
        ("--resume",),
        ["names 'step-00000004', which is missing"],
    ),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_run_folder_refuses(case, finished, tmp_path):
    remove, extra, says = RUN_CASES[case]
    run = copy_of(finished, tmp_path, remove)
    refused("train", *RUN_ARGS, *extra, "--output-dir", run, where=tmp_path, says=says)


def test_broken_checkpoints_only(finished, tmp_path):
    """Every checkpoint unreadable: refused naming the files (nothing silently restarts)."""
    run = copy_of(finished, tmp_path, ["final"])
    for states in run.glob("checkpoints/step-*/mp_rank_00_model_states.pt"):
        states.write_bytes(states.read_bytes()[:100])
    says = ["no checkpoint of this run can be resumed"]
    says += [f"step-0000000{s}/mp_rank_00_model_states.pt: cannot be read" for s in (2, 4)]
    refused("train", *RUN_ARGS, "--resume", "--output-dir", run, where=tmp_path, says=says, timeout=300)


# ----------------------------------------------------------------------------- ablate, rounds, demo


def ablate_yaml(tmp, text) -> str:
    path = tmp / "ablate.yaml"
    path.write_text(text)
    return str(path)


def sts_only(tmp) -> str:
    """A training file of tiny.jsonl's STS records only (no labelled records)."""
    lines = [line for line in DATA.read_text().splitlines(True) if '"dataset": "stsb"' in line]
    return write(tmp / "sts.jsonl", "".join(lines))


GOOD_ABLATE = "studies:\n  s:\n    rows:\n      a: {}\n"
GOOD_ROUNDS = f"train_input: {DATA}\nrounds: 1\n"
PIPELINE_CASES = {
    "ablate missing": lambda t: (("ablate", t / "none.yaml"), ["none.yaml"]),
    "ablate syntax": lambda t: (("ablate", ablate_yaml(t, "studies: [\n")), ["ablate.yaml:2"]),
    "ablate repeated key": lambda t: (
        ("ablate", ablate_yaml(t, GOOD_ABLATE + "studies: {}\n")),
        ["'studies' repeated"],
    ),
    "ablate unknown key": lambda t: (
        ("ablate", ablate_yaml(t, GOOD_ABLATE + "nprocs: 2\n")),
        ["'nprocs'", "nproc"],
    ),
    "ablate no studies": lambda t: (("ablate", ablate_yaml(t, "nproc: 2\n")), ["'studies' is empty"]),
    "ablate bad window": lambda t: (
        ("ablate", ablate_yaml(t, "studies:\n  s:\n    rows:\n      a: {window: [50, 10]}\n")),
        ["'studies.s.rows.a.window'"],
    ),
    "ablate unknown study": lambda t: (
        ("ablate", ablate_yaml(t, GOOD_ABLATE), "--study", "t"),
        ["unknown study t"],
    ),
    "ablate train input missing": lambda t: (
        ("ablate", ablate_yaml(t, GOOD_ABLATE + f"train_input: {t / 'none.jsonl'}\n")),
        ["'train_input': file not found", "none.jsonl"],
    ),
    "ablate bad override": lambda t: (
        ("ablate", ablate_yaml(t, GOOD_ABLATE), "nproc"),
        ["'nproc'", "key=value"],
    ),
    "ablate soup of an unknown row": lambda t: (
        ("ablate", ablate_yaml(t, "studies:\n  s:\n    rows:\n      a: {}\n      b: {soup: [a, c]}\n")),
        ["'studies.s.rows.b.soup' names ['c']"],
    ),
    "ablate dims zero": lambda t: (
        ("ablate", ablate_yaml(t, GOOD_ABLATE.replace("    rows:", "    dims: [0]\n    rows:"))),
        ["'studies.s.dims' must be whole numbers >= 1"],
    ),
    "ablate bad cap, labels and datasets, all at once": lambda t: (
        (
            "ablate",
            ablate_yaml(
                t,
                "studies:\n  s:\n    rows:\n"
                "      a: {cap: 'relative:0'}\n"
                "      b: {cap: 'top:0.95'}\n"
                "      c: {labels: example}\n"
                "      d: {datasets: [scifact, nq]}\n"
                "      e: {datasets: []}\n"
                "      f: {cap: 0.95}\n"
                "      g: {soup: [a, d], datasets: [scifact]}\n",
            ),
        ),
        [
            "'studies.s.rows.a.cap': 'relative:0': a relative cap must be > 0",
            "'studies.s.rows.b.cap': 'top:0.95': the cap's kind must be relative or absolute",
            "'studies.s.rows.c.labels' must be one of ['labels', 'examples'], got 'example'",
            "'studies.s.rows.d.datasets' names ['nq'], not bundled training datasets",
            "'studies.s.rows.e.datasets' must be one or more distinct names, got []",
            "'studies.s.rows.f.cap' must be str or null, got 0.95",
            "'studies.s.rows.g': a soup row changes nothing else",
        ],
    ),
    "ablate datasets and examples not in train input": lambda t: (
        (
            "ablate",
            ablate_yaml(
                t,
                f"train_input: {sts_only(t)}\nstudies:\n  s:\n    rows:\n"
                "      a: {datasets: [banking77]}\n      b: {labels: examples}\n",
            ),
        ),
        [
            "'studies.s.rows.a.datasets' names ['banking77'], not datasets of 'train_input' ['stsb']",
            "'studies.s.rows.b.labels': examples needs labelled records",
        ],
    ),
    "rounds soup of one checkpoint": lambda t: (
        ("rounds", ablate_yaml(t, GOOD_ROUNDS + "soup_last: 1\n")),
        ["'soup_last' must be 0 (no soup) or >= 2"],
    ),
    "rounds missing": lambda t: (("rounds", t / "none.yaml"), ["none.yaml"]),
    "rounds tab": lambda t: (
        ("rounds", ablate_yaml(t, "rounds: 1\n\ttrain_input: x\n")),
        ["ablate.yaml:2", "tabs"],
    ),
    "rounds zero": lambda t: (
        ("rounds", ablate_yaml(t, f"train_input: {DATA}\nrounds: 0\n")),
        ["'rounds' must be >= 1"],
    ),
    "rounds no input": lambda t: (("rounds", ablate_yaml(t, "rounds: 1\n")), ["'train_input' is empty"]),
    "rounds unknown key": lambda t: (
        ("rounds", ablate_yaml(t, GOOD_ROUNDS + "round: 2\n")),
        ["'round'", "rounds"],
    ),
    "rounds input missing": lambda t: (
        ("rounds", ablate_yaml(t, f"train_input: {t / 'no.jsonl'}\n")),
        ["'train_input': file not found", "no.jsonl"],
    ),
    "rounds script missing": lambda t: (
        ("rounds", ablate_yaml(t, GOOD_ROUNDS + f"train_script: {t / 'no.sh'}\n")),
        ["'train_script': file not found"],
    ),
    "rounds corpus missing": lambda t: (
        ("rounds", ablate_yaml(t, GOOD_ROUNDS + f"corpus: {t / 'corpus.jsonl'}\n")),
        ["'corpus': file not found"],
    ),
    "rounds nproc zero": lambda t: (
        ("rounds", ablate_yaml(t, GOOD_ROUNDS), "--local", "--nproc-per-node", "0"),
        ["--nproc-per-node"],
    ),
    "demo config missing": lambda t: (
        ("demo", "--config", t / "none.yaml", "--output-dir", t / "d"),
        ["none.yaml"],
    ),
    "demo random init": lambda t: (
        ("demo", "--config", TINY, "--output-dir", t / "d"),
        ["tiny.yaml", "random_init model has none"],
    ),
    "demo bad override": lambda t: (("demo", "model.pooling", "--output-dir", t / "d"), ["key=value"]),
    "demo k zero": lambda t: (("demo", "--k", "0", "--output-dir", t / "d"), ["--k"]),
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_pipeline_commands_refuse(case, tmp_path):
    args, says = PIPELINE_CASES[case](tmp_path)
    refused(*args, where=tmp_path, says=says)


def test_slurm_script_without_arguments_says_how_to_call_it(tmp_path):
    p = subprocess.run(["bash", str(ROOT / "slurm" / "srun_train.sh")], capture_output=True, text=True)
    assert p.returncode == 2 and "usage: sbatch slurm/train_8xa100.sh CONFIG --output-dir RUN_DIR" in p.stderr
