"""Config: every bad field at once, overrides, DeepSpeed JSON consistency, the seed's schedule."""

import json
import re

import pytest
import yaml
from conftest import ROOT, TINY, sfr_ds

from sfr_ds.config import ConfigError, load_config


def test_tiny_config_loads_and_overrides_apply():
    cfg = load_config(
        TINY, ["data.global_batch_size=16", "loss.temperature=0.05", "lora.target_modules=[q_proj]"]
    )
    assert cfg.data.global_batch_size == 16 and cfg.loss.temperature == 0.05
    assert cfg.lora.target_modules == ["q_proj"]
    assert cfg.data.train_files[0].startswith("/") and cfg.deepspeed.config.endswith("zero2.json")


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(
            TINY,
            [
                "data.global_batch_sze=4",
                "model.pooling=max",
                "optim.lr=fast",
                "loss.temperature=0",
                "gradcache.chunk_size=0",
            ],
        )
    problems = e.value.problems
    assert any(
        "data.global_batch_sze" in p and "did you mean 'data.global_batch_size'" in p for p in problems
    )
    assert any("'model.pooling' must be one of 'last', 'mean', 'cls'" in p for p in problems)
    assert any("'optim.lr' must be float" in p for p in problems)
    assert any("'loss.temperature' must be > 0" in p for p in problems)
    assert any("'gradcache.chunk_size' must be >= 1" in p for p in problems)
    assert len(problems) == 5
    with pytest.raises(ConfigError) as e:
        load_config(TINY, ["loss.temperature=0", "gradcache.chunk_size=0", "optim.warmup_steps=-1"])
    assert len(e.value.problems) == 3


def test_sfr_recipe_config_matches_the_seed():
    cfg = load_config(ROOT / "configs" / "sfr_mistral_7b.yaml", ["data.train_files=[configs/tiny.yaml]"])
    assert (cfg.data.global_batch_size, cfg.data.hard_negatives) == (2048, 7)
    assert (cfg.data.query_max_len, cfg.data.doc_max_len) == (128, 256)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.lora.r) == (1e-5, 100, 8)
    assert cfg.model.name_or_path == "intfloat/e5-mistral-7b-instruct" and cfg.data.homogeneous
    # the fast path (benchmarks/train_step.py): packed chunks, no recomputation inside a chunk
    assert cfg.gradcache.packing and not cfg.model.gradient_checkpointing


def test_deepspeed_json_must_agree(tmp_path):
    from sfr_ds.engine.training import ds_config

    bad = tmp_path / "ds.json"
    bad.write_text(
        json.dumps({"bf16": {"enabled": True}, "gradient_clipping": 5.0, "zero_optimization": {"stage": 2}})
    )
    with pytest.raises(ConfigError) as e:  # found when the config is loaded, before any model is built
        load_config(TINY, [f"deepspeed.config={bad}"])
    assert any("gradient_clipping" in p and "optim.grad_clip" in p for p in e.value.problems)
    assert any("bf16.enabled=True but model.dtype='fp32'" in p for p in e.value.problems)
    with pytest.raises(ConfigError, match="gradient_clipping"):  # and by the engine's own reader
        ds_config(load_config(TINY, [f"deepspeed.config={bad}"], resolve_files=False), 4)
    good = ds_config(load_config(TINY), 4)
    assert good["train_micro_batch_size_per_gpu"] == 4 and good["gradient_clipping"] == 1.0


def test_linear_warmup_then_decay_to_zero():
    from sfr_ds.engine.training import linear_schedule

    f = linear_schedule(100, 1000)
    assert f(0) == pytest.approx(0.01) and f(99) == pytest.approx(1.0)
    assert f(100) == pytest.approx(1.0) and f(550) == pytest.approx(0.5) and f(1000) == 0.0


@pytest.mark.integration
def test_cli_prints_all_problems():
    p = sfr_ds("train", TINY, "model.pooling=max", "data.hard_negatives=x", check=False)
    assert p.returncode != 0
    assert "model.pooling" in p.stderr and "data.hard_negatives" in p.stderr


def test_exponent_floats_without_a_dot_are_floats():
    """YAML 1.1 reads 1e-3 as a string; float fields take it as the number it spells."""
    from sfr_ds.config import LossConfig, build_dataclass

    problems: list[str] = []
    assert (
        build_dataclass(LossConfig, yaml.safe_load("temperature: 2e-2"), "loss.", problems).temperature
        == 0.02
    )
    cfg = load_config(TINY, ["optim.lr=1E-3", "optim.eps=-1e-8"])
    assert (cfg.optim.lr, cfg.optim.eps, problems) == (1e-3, -1e-8, [])
    with pytest.raises(ConfigError, match=re.escape("'optim.lr' must be float, got '1e-3x'")):
        load_config(TINY, ["optim.lr=1e-3x"])
