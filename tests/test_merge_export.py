"""Merge and export, against independent references: peft's own whole-model merge, the engine's weights
recorded at each step, and the embeddings sfr-ds computes from base + adapter.

One pair of 2-rank runs (ZeRO-2 and ZeRO-3, trained at the same time) is shared by every test. Their
base is a saved tiny Mistral *for causal LM* in 4 shards: the adapter is trained on the backbone, so
merging must map ``layers.*`` onto the checkpoint's ``model.layers.*`` and keep ``lm_head``.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY, proc_env
from safetensors.torch import load_file, save_file

from sfr_ds.dist import torchrun

pytestmark = pytest.mark.integration

STEPS, MID = 4, 2  # checkpoints at steps 2 and 4; step 2 is the mid-run one
QUERIES = [
    "a man eats food",
    "what is the capital of france and why do so many people live in it, "
    "year after year, in spite of the rents and the crowds",
    "x",
]
DOCS = ["doc one", "Paris is the capital and largest city of France. " * 8]  # the second is truncated


def make_base(folder: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(yaml.safe_load(TINY.read_text())["model"]["random_init"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch))
    model.save_pretrained(folder, max_shard_size="200KB")
    return folder


def start(cmd: list, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(
            [str(c) for c in cmd], cwd=ROOT, env=proc_env(), stdout=f, stderr=subprocess.STDOUT
        )


def finish(procs: dict[str, subprocess.Popen], logs: Path) -> dict[str, tuple[int, str]]:
    """Wait for every process: {name: (exit status, output)}."""
    return {name: (p.wait(timeout=400), (logs / f"{name}.log").read_text()) for name, p in procs.items()}


def succeeded(results: dict[str, tuple[int, str]], *names: str) -> None:
    for name in names:
        assert results[name][0] == 0, f"{name} failed:\n{results[name][1][-6000:]}"


def training(root: Path, name: str, base: Path) -> list:
    return torchrun(
        2,
        ROOT / "tests" / "train_worker.py",
        "weights",
        TINY,
        root / f"{name}.pt",
        "model.random_init=null",
        f"model.name_or_path={base}",
        f"optim.max_steps={STEPS}",
        f"run.save_every={MID}",
        f"deepspeed.config=ds_configs/{name}.json",
        f"run.output_dir={root / name}",
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """{'zero2'|'zero3': (run dir, {s: engine weights after s steps})}, trained side by side."""
    root = tmp_path_factory.mktemp("merge_export")
    base = make_base(root / "base")
    stages = ("zero2", "zero3")
    succeeded(finish({s: start(training(root, s, base), root / f"{s}.log") for s in stages}, root), *stages)
    return {s: (root / s, torch.load(root / f"{s}.pt", weights_only=True)) for s in stages}


@pytest.fixture(scope="module")
def cli(runs, tmp_path_factory) -> tuple[Path, dict[str, tuple[int, str]]]:
    """The commands under test, run side by side: (their output folder, {job: (exit status, output)}).

    export-zero2/3: ``sfr-ds export`` of the mid-run checkpoint; merge: ``sfr-ds merge`` of the ZeRO-2
    run in fp32 and small shards; tool-bf16: ``tools/merge_lora.py --dtype bf16`` of the same run;
    strict: ``sfr-ds merge --tolerance 0``, which no real merge meets.
    """
    out = tmp_path_factory.mktemp("cli")
    sfr = [sys.executable, "-m", "sfr_ds.cli"]
    jobs = {
        f"export-{s}": sfr
        + ["export", run_dir / "checkpoints" / f"step-{MID:08d}", "--out", out / f"export-{s}"]
        for s, (run_dir, _) in runs.items()
    }
    jobs["merge"] = sfr + ["merge", runs["zero2"][0], "--out", out / "merge", "--max-shard-size", "300KB"]
    jobs["tool-bf16"] = [
        sys.executable,
        ROOT / "tools" / "merge_lora.py",
        runs["zero2"][0],
        "--out",
        out / "tool-bf16",
        "--dtype",
        "bf16",
    ]
    jobs["strict"] = sfr + ["merge", runs["zero2"][0], "--out", out / "strict", "--tolerance", "0"]
    return out, finish({name: start(cmd, out / f"{name}.log") for name, cmd in jobs.items()}, out)


def adapter_as_engine_names(folder: Path) -> dict[str, torch.Tensor]:
    """PEFT's saved names -> the engine's (backbone.<...>.lora_A.default.weight)."""
    return {
        "backbone." + re.sub(r"\.(lora_[AB])\.", r".\1.default.", k): v
        for k, v in load_file(folder / "adapter_model.safetensors").items()
    }


def merged_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(f))
    return out


def peft_reference(run_dir: Path) -> dict[str, torch.Tensor]:
    """peft's own merge of the whole model (fp32), under the checkpoint's names."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    meta = json.loads((run_dir / "final" / "sfr_ds.json").read_text())
    causal = AutoModelForCausalLM.from_pretrained(meta["base_model"], dtype=torch.float32)
    causal.model = PeftModel.from_pretrained(causal.model, str(run_dir / "final")).merge_and_unload()
    return causal.state_dict()


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_export_mid_run_checkpoint_equals_engine_weights(runs, cli, stage):
    run_dir, states = runs[stage]
    if stage == "zero3":  # the trap: DeepSpeed's own module state holds empty placeholders
        tag = run_dir / "checkpoints" / f"step-{MID:08d}"
        module = torch.load(tag / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=True)["module"]
        assert module and all(v.numel() == 0 for v in module.values())
    succeeded(cli[1], f"export-{stage}")
    adapter = cli[0] / f"export-{stage}"
    got, engine = adapter_as_engine_names(adapter), states[MID]
    assert got.keys() == engine.keys()
    for k in engine:
        assert torch.equal(got[k], engine[k]), k
    assert all(float(v.abs().sum()) > 0 for k, v in got.items() if "lora_B" in k)  # trained, not empty
    # the weights moved after the checkpoint: the comparison tells steps apart
    assert any(not torch.equal(engine[k], states[MID + 1][k]) for k in engine)

    from sfr_ds.encode import TextEncoder

    enc = TextEncoder.from_run(adapter, device="cpu")
    loaded = {"backbone." + n: p for n, p in enc.embedder.backbone.named_parameters() if "lora_" in n}
    assert all(torch.equal(loaded[k], engine[k]) for k in engine)


def test_export_latest_equals_final_adapter(runs, tmp_path):
    from sfr_ds.export import export

    run_dir, _ = runs["zero3"]
    out = export(run_dir, tmp_path / "latest")  # the run dir: its latest checkpoint, the last step
    final, got = (load_file(d / "adapter_model.safetensors") for d in (run_dir / "final", out))
    assert final.keys() == got.keys() and all(torch.equal(final[k], got[k]) for k in final)
    a, b = (json.loads((d / "adapter_config.json").read_text()) for d in (out, run_dir / "final"))
    assert set(a.pop("target_modules")) == set(b.pop("target_modules")) and a == b


# ----------------------------------------------------------------------------- merge


@pytest.fixture(scope="module")
def merged(cli) -> Path:
    """The folder ``sfr-ds merge`` wrote (fp32, small shards)."""
    succeeded(cli[1], "merge")
    return cli[0] / "merge"


def reported_diff(stdout: str) -> float:
    return float(re.search(r"agree with base \+ adapter to (\S+) ", stdout).group(1))


def test_merge_equals_peft_merge_and_unload(runs, cli, merged):
    assert reported_diff(cli[1]["merge"][1]) <= 1e-4
    got, ref = merged_tensors(merged), peft_reference(runs["zero2"][0])
    assert len(list(merged.glob("model-*-of-*.safetensors"))) > 1
    assert (merged / "model.safetensors.index.json").exists()
    assert got.keys() == ref.keys()  # lm_head kept, names as in the base checkpoint
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    base = merged_tensors(Path(json.loads((merged / "sfr_ds.json").read_text())["merged_from_base"]))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[key], base[key])  # the LoRA delta is not zero


def test_merge_bf16_through_tool(runs, cli):
    succeeded(cli[1], "tool-bf16")
    folder, stdout = cli[0] / "tool-bf16", cli[1]["tool-bf16"][1]
    assert reported_diff(stdout) <= 5e-2
    got, ref = merged_tensors(folder), peft_reference(runs["zero2"][0])
    for k in ref:  # merged in fp32, rounded once to bf16
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], ref[k].to(torch.bfloat16)), k
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"


def test_sentence_transformers_and_mteb_give_sfr_ds_embeddings(runs, merged):
    from sentence_transformers import SentenceTransformer

    from sfr_ds.encode import TextEncoder
    from sfr_ds.merge import DEFAULT_INSTRUCTION

    ours = TextEncoder.from_run(runs["zero2"][0], device="cpu")
    want_q, want_d = ours.encode_queries(QUERIES, DEFAULT_INSTRUCTION), ours.encode_documents(DOCS)
    st = SentenceTransformer(str(merged), device="cpu")
    np.testing.assert_allclose(st.encode_query(QUERIES), want_q, atol=1e-5)
    np.testing.assert_allclose(st.encode_document(DOCS), want_d, atol=1e-5)
    again = TextEncoder.from_run(merged, device="cpu")  # our own encode path over the merged folder
    np.testing.assert_allclose(again.encode_queries(QUERIES, DEFAULT_INSTRUCTION), want_q, atol=1e-5)
    np.testing.assert_allclose(again.encode_documents(DOCS), want_d, atol=1e-5)

    import mteb
    from datasets import Dataset
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    model = SentenceTransformerEncoderWrapper(str(merged), device="cpu")
    task = mteb.get_task("SciFact").metadata
    for texts, kind, want in ((QUERIES, PromptType.query, want_q), (DOCS, PromptType.document, want_d)):
        got = model.encode(
            DataLoader(Dataset.from_dict({"text": texts}), batch_size=2),
            task_metadata=task,
            hf_split="test",
            hf_subset="default",
            prompt_type=kind,
        )
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_merged_model_is_left_alone(runs, merged, tmp_path):
    from sfr_ds.merge import merge

    stamp = {p: p.stat().st_mtime_ns for p in merged.rglob("*")}
    assert not merge(merged, tmp_path / "again").merged and not (tmp_path / "again").exists()
    assert not merge(runs["zero2"][0], merged).merged
    assert stamp == {p: p.stat().st_mtime_ns for p in merged.rglob("*")}


def test_merge_fails_above_tolerance(cli):
    status, output = cli[1]["strict"]
    assert status != 0 and "differ by" in output and "> 0 (fp32)" in output
    assert not (cli[0] / "strict").exists() and (cli[0] / "strict.partial" / "config.json").exists()


def test_verification_catches_a_wrong_merge(runs, merged, tmp_path):
    """The check has teeth: the merged model against an adapter it was not merged from."""
    from sfr_ds.merge import DEFAULT_INSTRUCTION
    from sfr_ds.merge.probes import verify

    other = shutil.copytree(runs["zero2"][0] / "final", tmp_path / "other")
    weights = load_file(other / "adapter_model.safetensors")
    save_file(
        {k: v * 2 if "lora_B" in k else v for k, v in weights.items()}, other / "adapter_model.safetensors"
    )
    assert verify(merged, other, "fp32", DEFAULT_INSTRUCTION) > 1e-2


def test_fan_in_fan_out_rslora_and_patterns_equal_peft(tmp_path):
    """peft's per-layer conventions (Conv1D fan_in_fan_out, rslora, rank/alpha patterns) on GPT-2."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2Model

    from sfr_ds.merge.shards import merge_weights

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    GPT2Model(config).save_pretrained(tmp_path / "base", max_shard_size="40KB")
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        use_rslora=True,
        rank_pattern={"c_fc": 2},
        alpha_pattern={"h.1.attn.c_proj": 3},
        init_lora_weights=False,
    )
    get_peft_model(GPT2Model.from_pretrained(tmp_path / "base"), lora).save_pretrained(tmp_path / "adapter")
    (tmp_path / "out").mkdir()
    merge_weights(tmp_path / "adapter", tmp_path / "base", tmp_path / "out", "fp32", "40KB")
    ref = PeftModel.from_pretrained(GPT2Model.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    ref = ref.merge_and_unload().state_dict()
    got = merged_tensors(tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1
    for k, v in got.items():
        assert torch.equal(v, ref[k]), k
