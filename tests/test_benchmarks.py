"""The training-step benchmark stays runnable (a GPU session has minutes, none to spend on a broken
script) and its Mistral-7B shape is Mistral-7B's."""

import json
import sys

import pytest
import torch
import train_step
from conftest import ROOT, run

pytestmark = pytest.mark.integration


def test_mistral_7b_shape_has_mistral_7b_parameter_count():
    from transformers import AutoConfig, AutoModel

    arch = dict(train_step.SHAPES["mistral-7b"][0])
    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch))
    lm_head = 32000 * 4096  # Mistral-7B-v0.1 has 7,241,732,096 parameters with its LM head
    assert sum(p.numel() for p in model.parameters()) == 7_241_732_096 - lm_head
    # per layer: q and o 4096 x 4096, k and v 4096 x 1024 (8 KV heads), gate/up/down 4096 x 14336
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    assert train_step.linear_weights(model) == 32 * per_layer


def test_train_step_benchmark_runs_both_modes_on_the_same_tokens(tmp_path):
    out = tmp_path / "bench.json"
    p = run(
        [
            sys.executable,
            str(ROOT / "benchmarks/train_step.py"),
            "--shape",
            "tiny",
            "--queries",
            "8",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--chunk-size",
            "8",
            "--host-reads",
            "--json",
            str(out),
        ]
    )
    rows = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    base, fast = rows["baseline"], rows["fast"]
    assert base["real_tokens"] == fast["real_tokens"] > 8 * 9  # the same 8 x 9 sequences
    assert fast["computed_tokens"] == fast["real_tokens"]  # packed: no padding computed
    assert base["computed_tokens"] > base["real_tokens"]  # padded to each chunk's longest
    assert base["chunks"] == 1 + 8  # 8 queries, then 64 documents, in runs of 8
    assert "| 8 | fast |" in p.stdout and "projection (fast, 8 queries)" in p.stdout
    # the whole step through DeepSpeed: the packed path reads device values only at the gate
    # (sfr_ds/train.py), the gradient norm (engine.py, DeepSpeed) and in host-side packing
    fast_reads = fast["host_reads"].splitlines()
    assert fast_reads and not [
        r
        for r in fast_reads
        if any(where in r for where in ("forward_backward.py", "model.py", "transformers/", "peft/"))
    ], fast["host_reads"]
    assert "transformers/masking_utils.py" in base["host_reads"]  # padded: a mask check per forward


def test_host_inputs_benchmark_measures_one_ranks_share():
    p = run(
        [
            sys.executable,
            str(ROOT / "benchmarks/host_inputs.py"),
            "--tokenizer",
            "builtin:tiny-tokenizer",
            "--ranks",
            "4",
            "--global-batch",
            "64",
            "--steps",
            "2",
        ]
    )
    assert "one rank's share (16 queries x 8 documents of a 64-query global batch over 4 ranks" in p.stdout
    assert "of its rate alone" in p.stdout


def test_encode_benchmark_compares_the_same_outputs(tmp_path):
    """Packed, padded and sentence-transformers encode the same texts to the same embeddings."""
    out = tmp_path / "encode.json"
    p = run(
        [
            sys.executable,
            str(ROOT / "benchmarks/encode_throughput.py"),
            "--models",
            "minilm",
            "--texts",
            "12",
            "--max-tokens",
            "512",
            "--batch-size",
            "4",
            "--json",
            str(out),
        ]
    )
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"packed", "padded", "st"}
    assert all(r["texts"] == 12 and r["tokens"] == rows["packed"]["tokens"] > 12 * 20 for r in rows.values())
    assert rows["padded"]["max_abs_diff"] <= 1e-5 and rows["st"]["max_abs_diff"] <= 1e-5
    assert "| minilm | st | 12 |" in p.stdout
