"""Model soups (``sfr-ds soup``) against independent references: peft's own ``merge_and_unload`` of each
input, averaged here in float64, and the embeddings of that averaged model.

The adapters are random and non-zero, with different ranks and alphas (one with rslora and rank/alpha
patterns), so a scaling folded wrongly changes every LoRA-targeted weight. The fast tests use a tiny
random Mistral; the same exactness on SmolLM2-135M, a selection by the real ``mini`` suite and
checkpoint inputs are ``slow``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from bad_inputs import refused
from conftest import TINY, sfr_ds
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

QUERIES = ["a man eats food", "what is the capital of france and why do so many people live in it", "x"]
DOCS = ["doc one", "Paris is the capital and largest city of France. " * 8]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# (r, lora_alpha, rslora, patterns): scalings 2, 0.5 and 3/sqrt(2), with per-layer exceptions
ADAPTERS = [
    (4, 8, False, {}),
    (8, 4, False, {}),
    (2, 3, True, {"rank_pattern": {"o_proj": 3}, "alpha_pattern": {"down_proj": 6}}),
]
EXACT = 1e-6  # weights, fp32
EMBED = 1e-5  # embeddings


# ----------------------------------------------------------------------------- inputs


def tiny_arch() -> dict:
    return dict(yaml.safe_load(TINY.read_text())["model"]["random_init"])


def make_base(folder: Path, seed: int = 0) -> Path:
    from transformers import AutoConfig, AutoModel

    arch = tiny_arch()
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch)).save_pretrained(folder)
    return folder


def make_adapter(
    folder: Path,
    base: Path,
    r: int,
    alpha: float,
    rslora: bool = False,
    patterns: dict | None = None,
    seed: int = 1,
    targets=TARGETS,
    tokenizer: str = "builtin:tiny-tokenizer",
    base_model: str | None = None,
    **meta,
) -> Path:
    """A random non-zero LoRA saved as an sfr-ds adapter folder over ``base``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from sfr_ds.config import ModelConfig
    from sfr_ds.model import load_tokenizer

    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=rslora,
        target_modules=list(targets),
        init_lora_weights=False,
        **(patterns or {}),
    )
    model = get_peft_model(AutoModel.from_pretrained(base, dtype=torch.float32), config)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a modest change, like a trained adapter's
            p.data.mul_(0.1)
    model.save_pretrained(folder)
    load_tokenizer(ModelConfig(name_or_path=tokenizer)).save_pretrained(folder)
    info = {
        "base_model": base_model or str(base),
        "random_init": None,
        "base_model_dir": None,
        "pooling": "last",
        "normalize": True,
        "append_eos": True,
        "query_max_len": 32,
        "doc_max_len": 64,
        "dtype": "fp32",
        "lora": True,
        **meta,
    }
    (folder / "sfr_ds.json").write_text(json.dumps(info, indent=2))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny random base and three adapters over it (ADAPTERS)."""
    root = tmp_path_factory.mktemp("soup")
    base = make_base(root / "base")
    adapters = [
        make_adapter(root / f"a{i}", base, r, alpha, rslora, patterns, seed=i + 1)
        for i, (r, alpha, rslora, patterns) in enumerate(ADAPTERS)
    ]
    return {"root": root, "base": base, "adapters": adapters}


# ----------------------------------------------------------------------------- references


def peft_merged(base: str | Path, adapter: Path) -> dict[str, torch.Tensor]:
    """peft's own merge of the whole model, fp32."""
    from peft import PeftModel
    from transformers import AutoModel

    model = AutoModel.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().state_dict()


def weighted_average(base: str | Path, adapters: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum_i w_i * merge_and_unload(base + adapter_i), in float64."""
    total: dict[str, torch.Tensor] = {}
    for adapter, w in zip(adapters, weights):
        for k, v in peft_merged(base, adapter).items():
            total[k] = total.get(k, 0) + w * v.double()
    return total


def max_diff(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    return max(float((got[k].double() - want[k].double()).abs().max()) for k in want)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(f))
    return out


def full_model(base: str | Path, state: dict, adapter: Path, out: Path) -> Path:
    """A model folder of full weights ``state`` that sfr-ds reads as it reads the adapter (the
    adapter's tokenizer and encoding settings, ``"merged": true``)."""
    from transformers import AutoModel

    from sfr_ds.config import ModelConfig
    from sfr_ds.model import load_tokenizer

    model = AutoModel.from_pretrained(base, dtype=torch.float32)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.save_pretrained(out)
    load_tokenizer(ModelConfig(name_or_path=str(adapter))).save_pretrained(out)
    meta = json.loads((adapter / "sfr_ds.json").read_text())
    (out / "sfr_ds.json").write_text(json.dumps({**meta, "merged": True, "lora": False}))
    return out


def embeddings(encoder) -> np.ndarray:
    return np.concatenate(
        [encoder.encode_queries(QUERIES, "Retrieve passages"), encoder.encode_documents(DOCS)]
    )


def resolved_base(adapter: Path) -> str:
    from sfr_ds.run_dir import base_model_path, read_meta
    from sfr_ds.zoo import resolve_model_path

    return resolve_model_path(base_model_path(adapter, read_meta(adapter)))


def check_linear_soup_exact(adapters: list[Path], weights: list[float], out: Path) -> dict:
    """The soup's merged weights (peft) and its embeddings (sfr-ds, adapter applied) against the weighted
    average of the merged inputs; returns the figures."""
    from sfr_ds.encode import TextEncoder
    from sfr_ds.soup import soup

    soup(adapters, out, weights=weights)
    base = resolved_base(adapters[0])
    total = sum(weights)
    want = weighted_average(base, adapters, [w / total for w in weights])
    weight_diff = max_diff(peft_merged(base, out), want)
    soup_emb = embeddings(TextEncoder.from_run(out, device="cpu"))
    average = full_model(base, want, adapters[0], out.with_name(out.name + "-average"))
    emb_diff = float(np.abs(soup_emb - embeddings(TextEncoder.from_run(average, device="cpu"))).max())
    return {"weights": weight_diff, "embeddings": emb_diff}


# ----------------------------------------------------------------------------- linear: exact


def test_linear_soup_equals_weighted_average_of_merged_models(tiny, tmp_path):
    figures = check_linear_soup_exact(tiny["adapters"], [0.5, 0.3, 0.2], tmp_path / "soup")
    assert figures["weights"] <= EXACT, figures
    assert figures["embeddings"] <= EMBED, figures
    config = json.loads((tmp_path / "soup" / "adapter_config.json").read_text())
    # rank 4 + 8 + 2 = 14 (o_proj: 4 + 8 + 3), lora_alpha = rank: the soup's own scaling is 1
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (14, 14, False)
    assert all(config["alpha_pattern"][k] == v for k, v in config["rank_pattern"].items())
    assert set(config["rank_pattern"].values()) == {15}
    meta = json.loads((tmp_path / "soup" / "sfr_ds.json").read_text())
    assert meta["soup"]["method"] == "linear" and meta["soup"]["weights"] == [0.5, 0.3, 0.2]
    assert [i["path"] for i in meta["soup"]["inputs"]] == [str(a) for a in tiny["adapters"]]
    from sfr_ds.run_dir import content_digest

    assert [i["digest"] for i in meta["soup"]["inputs"]] == [content_digest(a) for a in tiny["adapters"]]


def test_soup_of_three_copies_is_the_adapter(tiny, tmp_path):
    """Relative weights (divided by their sum) over one adapter: its own merged weights."""
    from sfr_ds.soup import soup

    adapter = tiny["adapters"][2]  # rslora and patterns: the scaling that is easiest to get wrong
    soup([adapter] * 3, tmp_path / "soup", weights=[5, 1, 2])
    want = peft_merged(tiny["base"], adapter)
    assert max_diff(peft_merged(tiny["base"], tmp_path / "soup"), want) <= EXACT
    # the delta is not zero: the comparison tells the adapter from its base
    assert max_diff(tensors(tiny["base"]), want) > 1e-3


def test_conv1d_fan_in_fan_out_soup_equals_weighted_average(tiny, tmp_path):
    """peft's GPT-2 convention (Conv1D weights stored [in, out], ``fan_in_fan_out``), with rslora and
    rank/alpha patterns: the scalings are read off peft's layers, so the soup is exact here too."""
    from transformers import GPT2Config, GPT2Model

    from sfr_ds.soup import soup

    torch.manual_seed(0)
    GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)).save_pretrained(
        tmp_path / "base"
    )
    targets = ["c_attn", "c_proj", "c_fc"]
    adapters = [
        make_adapter(tmp_path / "g0", tmp_path / "base", 4, 8, False, {"fan_in_fan_out": True}, 1, targets),
        make_adapter(
            tmp_path / "g1",
            tmp_path / "base",
            2,
            5,
            True,
            {"fan_in_fan_out": True, "rank_pattern": {"c_fc": 6}, "alpha_pattern": {"h.1.attn.c_proj": 3}},
            2,
            targets,
        ),
    ]
    soup(adapters, tmp_path / "soup", weights=[1, 3])
    want = weighted_average(tmp_path / "base", adapters, [0.25, 0.75])
    assert max_diff(peft_merged(tmp_path / "base", tmp_path / "soup"), want) <= EXACT
    assert max_diff(tensors(tmp_path / "base"), want) > 1e-3


def test_soup_loads_in_peft_and_merged_in_sentence_transformers(tiny, tmp_path):
    """``PeftModel.from_pretrained`` reads the soup; ``sfr-ds merge`` makes it full weights that
    sentence-transformers loads, giving sfr-ds's own embeddings of the (unmerged) soup."""
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from sfr_ds.encode import TextEncoder
    from sfr_ds.merge import DEFAULT_INSTRUCTION

    sfr_ds("soup", *tiny["adapters"], "--out", tmp_path / "soup")
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny["base"]), str(tmp_path / "soup"))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    merged = sfr_ds("merge", tmp_path / "soup", "--out", tmp_path / "merged")
    assert "agree with base + adapter" in merged.stdout
    ours = TextEncoder.from_run(tmp_path / "soup", device="cpu")
    st = SentenceTransformer(str(tmp_path / "merged"), device="cpu")
    np.testing.assert_allclose(
        st.encode_query(QUERIES), ours.encode_queries(QUERIES, DEFAULT_INSTRUCTION), atol=EMBED
    )
    np.testing.assert_allclose(st.encode_document(DOCS), ours.encode_documents(DOCS), atol=EMBED)
    # and sfr-ds merge's shard-wise weights are the average of the merged inputs
    want = weighted_average(tiny["base"], tiny["adapters"], [1 / 3] * 3)
    assert max_diff(tensors(tmp_path / "merged"), want) <= EXACT


# ----------------------------------------------------------------------------- slerp


@pytest.fixture(scope="module")
def slerps(tiny) -> dict[float, Path]:
    """Slerp soups of the first two adapters at t = 0, 0.3 and 1 (fp32), through the CLI."""
    a, b = tiny["adapters"][:2]
    out = {}
    for t in (0.0, 0.3, 1.0):
        out[t] = tiny["root"] / f"slerp-{t}"
        sfr_ds("soup", a, b, "--method", "slerp", "--t", t, "--dtype", "fp32", "--out", out[t])
    return out


def test_slerp_endpoints_are_the_inputs(tiny, slerps):
    a, b = tiny["adapters"][:2]
    assert max_diff(tensors(slerps[0.0]), peft_merged(tiny["base"], a)) <= EXACT
    assert max_diff(tensors(slerps[1.0]), peft_merged(tiny["base"], b)) <= EXACT
    meta = json.loads((slerps[0.3] / "sfr_ds.json").read_text())
    assert meta["merged"] and meta["soup"]["method"] == "slerp" and meta["soup"]["t"] == 0.3


def test_slerp_between_is_on_the_arc(tiny, slerps):
    """At t, each layer's delta from the base makes the angle t*theta with the first input's delta and
    (1-t)*theta with the second's (theta: their angle), and its norm is (1-t)|d_1| + t|d_2|; both
    deltas from peft's merges."""
    base = tensors(tiny["base"])
    da, db = (
        {k: v.double() - base[k].double() for k, v in peft_merged(tiny["base"], x).items()}
        for x in tiny["adapters"][:2]
    )
    got = {k: v.double() - base[k].double() for k, v in tensors(slerps[0.3]).items()}

    def angle(x, y):
        return math.acos(max(-1.0, min(1.0, float((x * y).sum() / (x.norm() * y.norm())))))

    layers = [k for k in base if float(da[k].abs().max()) > 0]
    assert len(layers) == 2 * len(TARGETS)
    for k in layers:
        theta = angle(da[k], db[k])
        assert theta > 0.1, k  # the deltas are far from parallel: slerp is not lerp here
        assert abs(angle(got[k], da[k]) - 0.3 * theta) < 1e-4, k
        assert abs(angle(got[k], db[k]) - 0.7 * theta) < 1e-4, k
        norm = 0.7 * float(da[k].norm()) + 0.3 * float(db[k].norm())
        assert abs(float(got[k].norm()) / norm - 1) < 1e-5, k
    for k in set(base) - set(layers):
        assert torch.equal(got[k], torch.zeros_like(got[k])), k


def test_slerp_folder_loads_in_sentence_transformers(slerps):
    from sentence_transformers import SentenceTransformer

    from sfr_ds.encode import TextEncoder
    from sfr_ds.merge import DEFAULT_INSTRUCTION

    ours = TextEncoder.from_run(slerps[0.3], device="cpu")
    st = SentenceTransformer(str(slerps[0.3]), device="cpu")
    np.testing.assert_allclose(
        st.encode_query(QUERIES), ours.encode_queries(QUERIES, DEFAULT_INSTRUCTION), atol=EMBED
    )


# ----------------------------------------------------------------------------- bad inputs


def one_line(p) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    return lines[0]


def edited(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "sfr_ds.json").read_text())
    (dst / "sfr_ds.json").write_text(json.dumps({**meta, **changes}))
    return dst


@pytest.fixture(scope="module")
def odd(tiny) -> dict[str, Path]:
    """Adapters that cannot be souped with tiny's: another base, other targets, random-init bases."""
    root = tiny["root"] / "odd"
    other_base = make_base(root / "other-base", seed=5)
    a0 = tiny["adapters"][0]
    out = {
        "other_base": make_adapter(root / "other-base-adapter", other_base, 4, 8),
        "other_targets": make_adapter(
            root / "other-targets", tiny["base"], 4, 8, targets=["q_proj", "v_proj"]
        ),
        "mean_pooling": edited(a0, root / "mean", pooling="mean"),
        "merged": edited(a0, root / "merged", merged=True),
    }
    for name, seed in (("random-1", 0), ("random-2", 7)):  # random-init runs: their own base copies
        base = make_base(root / name / "base_model", seed=seed)
        make_adapter(root / name / "final", base, 4, 8, base_model="tiny-random-mistral")
        edited_meta = {
            "random_init": tiny_arch(),
            "base_model_dir": os.path.relpath(base, root / name / "final"),
        }
        meta = json.loads((root / name / "final" / "sfr_ds.json").read_text())
        (root / name / "final" / "sfr_ds.json").write_text(json.dumps({**meta, **edited_meta}))
        out[name] = root / name
    return out


BAD = {
    # name: (arguments after the inputs, inputs by key, what the one line says)
    "different_bases": (
        [],
        ["a0", "other_base"],
        ["other-base-adapter/sfr_ds.json", "base_model", "differs"],
    ),
    "different_random_init_bases": ([], ["random-1", "random-2"], ["random-init base model", "another seed"]),
    "different_targets": ([], ["a0", "other_targets"], ["adapter_config.json", "target_modules", "differs"]),
    "different_pooling": ([], ["a0", "mean_pooling"], ["mean/sfr_ds.json", "pooling 'mean' differs"]),
    "merged_input": ([], ["a0", "merged"], ["merged/sfr_ds.json", "a merged model"]),
    "weights_count": (
        ["--weights", "0.5,0.5"],
        ["a0", "a1", "a2"],
        ["--weights: 2 weight(s) for 3 input(s)"],
    ),
    "weight_zero": (
        ["--weights", "1,0,1"],
        ["a0", "a1", "a2"],
        ["--weights: every weight must be a number > 0"],
    ),
    "weight_negative": (["--weights", "1,-1"], ["a0", "a1"], ["--weights", "> 0, got -1"]),
    "slerp_three": (
        ["--method", "slerp"],
        ["a0", "a1", "a2"],
        ["slerp interpolates exactly two inputs, got 3"],
    ),
    "slerp_t_out_of_range": (["--method", "slerp", "--t", "1.5"], ["a0", "a1"], ["--t", "[0, 1], got 1.5"]),
    "t_with_linear": (["--t", "0.5"], ["a0", "a1"], ["--t is for --method slerp"]),
    "select_by_unknown_suite": (
        ["--select-by", "nope"],
        ["a0", "a1"],
        ["--select-by", "unknown suite 'nope'"],
    ),
    "not_a_model": ([], ["a0", "empty"], ["empty: not an sfr-ds run, adapter folder or checkpoint"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_are_one_line_errors(tiny, odd, case, tmp_path):
    args, keys, says = BAD[case]
    (tmp_path / "empty").mkdir()
    named = {**{f"a{i}": a for i, a in enumerate(tiny["adapters"])}, **odd, "empty": tmp_path / "empty"}
    p = refused(
        "soup", *[named[k] for k in keys], "--out", tmp_path / "out", *args, where=tiny["root"], says=says
    )
    one_line(p)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_output_inside_an_input_refused(tiny, tmp_path):
    where = tiny["adapters"][0]
    p = refused("soup", *tiny["adapters"], "--out", where / "soup", where=where, says="lies inside the input")
    one_line(p)
    assert not (where / "soup").exists()


def test_soup_stage_for_pipelines(tiny, tmp_path):
    """``soup_stage`` is the ``sfr-ds soup`` command a pipeline runs, done once the soup is in place."""
    from sfr_ds.soup import soup, soup_stage

    stage = soup_stage("soup", tiny["adapters"][:2], tmp_path / "soup", "--weights", "2,1")
    assert stage.command[3:] == [
        "soup",
        *map(str, tiny["adapters"][:2]),
        "--out",
        str(tmp_path / "soup"),
        "--weights",
        "2,1",
    ]
    assert not stage.done()
    soup(tiny["adapters"][:2], tmp_path / "soup", weights=[2, 1])
    assert stage.done()


def test_existing_output_refused_in_a_fresh_process(tiny, tmp_path):
    """The real streams of a user's process: one line, nothing written into the folder."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    p = refused(
        "soup",
        *tiny["adapters"],
        "--out",
        tmp_path / "out",
        where=tmp_path,
        says="exists and is not empty",
        process=True,
    )
    assert one_line(p).startswith(f"Error: {tmp_path / 'out'} exists and is not empty")
    assert sorted(os.listdir(tmp_path / "out")) == ["keep.txt"]


# ----------------------------------------------------------------------------- chosen by evaluation


def test_greedy_selection_keeps_the_best_and_tables_every_candidate(tiny, tmp_path):
    """A stand-in evaluator scores each model by which inputs it is made of: greedy adds the third
    input (score rises), refuses the second (it would drop), and beats the uniform soup."""
    from sfr_ds.soup import soup

    a0, a1, a2 = (str(a) for a in tiny["adapters"])
    score = {(a0,): 50.0, (a1,): 40.0, (a2,): 45.0, (a0, a2): 52.0, (a0, a1, a2): 51.0}
    calls = []

    def evaluate(model: Path, folder: Path) -> dict:
        meta = json.loads((model / "sfr_ds.json").read_text())
        made_of = (
            tuple(sorted(i["path"] for i in meta["soup"]["inputs"])) if "soup" in meta else (str(model),)
        )
        calls.append(made_of)
        return {"AVG": score[made_of], "STS_dev": score[made_of] - 1}

    report = soup(tiny["adapters"], tmp_path / "soup", evaluate=evaluate)
    assert len(calls) == len(set(calls)) == 5  # each distinct soup scored once
    meta = json.loads((tmp_path / "soup" / "sfr_ds.json").read_text())["soup"]
    assert (meta["candidate"], meta["AVG"], meta["weights"]) == ("greedy", 52.0, [0.5, 0.5])
    assert [i["path"] for i in meta["inputs"]] == [a0, a2]
    table = json.loads((tmp_path / "soup" / "soup_selection.json").read_text())["candidates"]
    names = [c["name"] for c in table]
    assert names == ["input-1", "input-2", "input-3", "uniform", "greedy-add-3", "greedy-add-2", "greedy"]
    assert [c["name"] for c in table if c["kept"]] == ["greedy"]
    assert (
        "| greedy | 1 (0.5), 3 (0.5) | 51.00 | 52.00 | **yes** |"
        in (tmp_path / "soup" / "soup_selection.md").read_text()
    )
    assert "greedy (AVG 52.00)" in report.message


# ----------------------------------------------------------------------------- slow: the real thing


@pytest.mark.slow
def test_linear_soup_exact_on_smollm2(tmp_path):
    """The same exactness on SmolLM2-135M (``builtin:smollm2-135m``), LoRA on every linear layer."""
    from sfr_ds.zoo import resolve_model_path

    base = resolve_model_path("builtin:smollm2-135m")
    adapters = [
        make_adapter(
            tmp_path / f"a{i}",
            base,
            r,
            alpha,
            rslora,
            patterns,
            seed=i + 1,
            tokenizer="builtin:smollm2-135m",
            base_model="builtin:smollm2-135m",
        )
        for i, (r, alpha, rslora, patterns) in enumerate(ADAPTERS)
    ]
    figures = check_linear_soup_exact(adapters, [0.5, 0.3, 0.2], tmp_path / "soup")
    assert figures["weights"] <= EXACT, figures
    assert figures["embeddings"] <= EMBED, figures


@pytest.mark.slow
def test_select_by_mini_suite(tiny, tmp_path):
    """``--select-by mini`` through the CLI: real evaluations, the kept soup among them; a rerun with
    the inputs in another order finds every evaluation done."""
    p = sfr_ds("soup", *tiny["adapters"], "--select-by", "mini", "--out", tmp_path / "soup", timeout=1200)
    table = json.loads((tmp_path / "soup" / "soup_selection.json").read_text())["candidates"]
    kept = [c for c in table if c["kept"]]
    assert len(kept) == 1 and kept[0]["AVG"] == max(c["AVG"] for c in table if "greedy-add" not in c["name"])
    assert all(
        set(c["groups"]) == {"Clustering_dev", "Reranking_dev", "Retrieval_dev", "STS_dev"} for c in table
    )
    meta = json.loads((tmp_path / "soup" / "sfr_ds.json").read_text())["soup"]
    assert meta["selected_by"] == "--suite mini" and meta["candidate"] == kept[0]["name"]
    assert f"kept {kept[0]['name']} (AVG {kept[0]['AVG']:.2f})" in p.stdout
    again = sfr_ds(
        "eval",
        "run",
        tmp_path / "soup",
        "--suite",
        "mini",
        "--no-progress",
        "--output-dir",
        tmp_path / "again",
        timeout=600,
    )
    assert again.returncode == 0
    from sfr_ds.eval.suite import read_scores

    assert abs(read_scores(tmp_path / "again").avg - kept[0]["AVG"]) < 1e-6
    work, out = tmp_path / "soup.select", tmp_path / "soup2"
    rerun = sfr_ds("soup", *tiny["adapters"][::-1], "--select-by", "mini", "--work", work, "--out", out)
    assert rerun.stdout.count("done already") == len({c["eval_dir"] for c in table})
    assert json.loads((out / "sfr_ds.json").read_text())["soup"]["AVG"] == kept[0]["AVG"]


@pytest.mark.slow
def test_checkpoints_as_inputs(tmp_path):
    """The last two checkpoints of one run, exported as ``sfr-ds export`` does, give the soup of the
    exported adapters."""
    from sfr_ds.soup import soup

    run = tmp_path / "run"
    sfr_ds("train", TINY, "optim.max_steps=4", "run.save_every=2", "--output-dir", run, "--nproc-per-node", 1)
    steps = [run / "checkpoints" / f"step-{s:08d}" for s in (2, 4)]
    for s in steps:
        sfr_ds("export", s, "--out", tmp_path / f"export-{s.name}")
    soup(steps, tmp_path / "from-checkpoints")
    soup([tmp_path / f"export-{s.name}" for s in steps], tmp_path / "from-exports")
    a, b = (
        load_file(tmp_path / d / "adapter_model.safetensors") for d in ("from-checkpoints", "from-exports")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "from-checkpoints" / "sfr_ds.json").read_text())
    assert [i["path"] for i in meta["soup"]["inputs"]] == [str(s) for s in steps]
    sfr_ds("soup", run, "--last", 2, "--out", tmp_path / "last-2")  # the same two, named by the run
    c = load_file(tmp_path / "last-2" / "adapter_model.safetensors")
    assert c.keys() == a.keys() and all(torch.equal(a[k], c[k]) for k in a)
    assert not list(tmp_path.glob(".from-checkpoints.inputs.*"))  # the exports were removed


def test_last_checkpoints_of_a_run(tmp_path):
    """--last K: the run's K newest complete checkpoints, oldest first; too few is one clear error."""
    from sfr_ds.merge import MergeError
    from sfr_ds.run_dir import COMPLETE
    from sfr_ds.soup.inputs import last_checkpoints

    run = tmp_path / "run"
    for step in (2, 4, 6):
        (run / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{step:08d}" / COMPLETE).write_text("")
    (run / "checkpoints" / "step-00000008").mkdir()  # being written: not complete
    got = last_checkpoints([run], 2)
    assert got == [run / "checkpoints" / "step-00000004", run / "checkpoints" / "step-00000006"]
    with pytest.raises(MergeError, match=r"has 3 complete checkpoint\(s\).*run.keep_checkpoints >= 4"):
        last_checkpoints([run], 4)
    with pytest.raises(MergeError, match="--last 2 takes one run directory, got 2 inputs"):
        last_checkpoints([run, run], 2)
