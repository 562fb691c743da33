"""Peak memory of folding LoRA into full weights: sfr-ds's shard-wise merge vs a naive load-both-and-merge.

Each merge runs in a fresh process that reports its own peak resident set size (VmHWM, which counts
mapped file pages it touched as well as allocations):

  floor     imports torch, transformers, peft and sfr_ds.merge, then stops: the part no merge avoids
  sfr-ds    ``sfr_ds.merge.merge(..., check=False)``: weights, config, tokenizer, ST layout
  naive     AutoModel.from_pretrained(base) + PeftModel.from_pretrained + merge_and_unload + save_pretrained
  verified  ``sfr-ds merge`` as run by default: the shard-wise merge, then the probe-text check, which
            loads base + adapter and then the merged model, one after the other

Models: SmolLM2-135M (``builtin:smollm2-135m``, one fp32 file) and a random Llama of about 1.1B
parameters (TinyLlama's shape) saved in bf16 in 500 MB shards. Adapters: LoRA r=8 on every linear
layer, with random non-zero weights. Output: bf16, in shards of at most 500 MB.

    python benchmarks/merge_memory.py [--models smollm2 llama1b] [--work DIR] [--no-verified]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shapes import LLAMA_1B

META = {
    "random_init": None,
    "base_model_dir": None,
    "pooling": "last",
    "normalize": True,
    "append_eos": True,
    "query_max_len": 128,
    "doc_max_len": 256,
    "dtype": "bf16",
    "lora": True,
}
SHARD = "500MB"  # output shards, both methods; the 1B base is saved in shards of this size too


# ----------------------------------------------------------------------------- inputs


def save_adapter(model, tokenizer_name: str, base_model: str, out: Path) -> None:
    """A random non-zero LoRA on every linear layer, saved as an sfr-ds adapter folder."""
    import torch
    from peft import LoraConfig, get_peft_model

    from sfr_ds.config import ModelConfig
    from sfr_ds.model import load_tokenizer

    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    )
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # small, like a trained adapter: a visible but modest change
            p.data.mul_(0.01)
    peft_model.save_pretrained(str(out))
    load_tokenizer(ModelConfig(name_or_path=tokenizer_name)).save_pretrained(str(out))
    (out / "sfr_ds.json").write_text(json.dumps(dict(META, base_model=base_model), indent=2))


def prepare_smollm2(work: Path) -> Path:
    import torch
    from transformers import AutoModel

    from sfr_ds.zoo import resolve_model_path

    adapter = work / "smollm2-adapter"
    if not (adapter / "sfr_ds.json").exists():
        model = AutoModel.from_pretrained(resolve_model_path("builtin:smollm2-135m"), dtype=torch.float32)
        save_adapter(model, "builtin:smollm2-135m", "builtin:smollm2-135m", adapter)
    return adapter


def prepare_llama1b(work: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    base, adapter = work / "llama1b-base", work / "llama1b-adapter"
    if not (adapter / "sfr_ds.json").exists():
        torch.manual_seed(0)
        model = AutoModel.from_config(AutoConfig.for_model(**LLAMA_1B), dtype=torch.bfloat16)
        model.save_pretrained(str(base), max_shard_size=SHARD)
        save_adapter(model, "builtin:tiny-tokenizer", str(base), adapter)
    return adapter


PREPARE = {"smollm2": prepare_smollm2, "llama1b": prepare_llama1b}


# ----------------------------------------------------------------------------- one measured process


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def child(method: str, adapter: Path, out: Path) -> None:
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from sfr_ds.merge import merge
    from sfr_ds.merge.layout import write_tokenizer
    from sfr_ds.run_dir import base_model_path, read_meta
    from sfr_ds.zoo import resolve_model_path

    start = time.perf_counter()
    extra = {}
    if method in ("sfr-ds", "verified"):
        report = merge(adapter, out, dtype="bf16", max_shard_size=SHARD, check=method == "verified")
        extra = {"max_abs_diff": report.max_abs_diff}
    elif method == "naive":
        from peft import PeftModel
        from transformers import AutoModel

        meta = read_meta(adapter)
        base = AutoModel.from_pretrained(
            resolve_model_path(base_model_path(adapter, meta)), dtype=torch.bfloat16
        )
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        merged.save_pretrained(str(out), max_shard_size=SHARD)
        write_tokenizer(adapter, out, meta)
    print(
        json.dumps(
            {
                "method": method,
                "peak_rss_mb": round(peak_rss_mb()),
                "seconds": round(time.perf_counter() - start, 1),
                **extra,
            }
        )
    )


def measure(method: str, adapter: Path, out: Path) -> dict:
    p = subprocess.run(
        [sys.executable, __file__, "--child", method, "--adapter", str(adapter), "--out", str(out)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TOKENIZERS_PARALLELISM="false"),
    )
    if p.returncode:
        raise RuntimeError(f"{method} failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench(name: str, work: Path, verified: bool) -> None:
    adapter = PREPARE[name](work)
    rows = {}
    for method in ["floor", "sfr-ds", "naive"] + (["verified"] if verified else []):
        out = work / f"{name}-{method}"
        subprocess.run(["rm", "-rf", str(out), str(out) + ".partial"], check=True)
        rows[method] = measure(method, adapter, out)
        print(
            f"{name:8s} {method:9s} peak RSS {rows[method]['peak_rss_mb']:6d} MB  "
            f"{rows[method]['seconds']:6.1f} s"
            + (
                f"  max |diff| {rows[method]['max_abs_diff']:.2e}"
                if rows[method].get("max_abs_diff") is not None
                else ""
            ),
            flush=True,
        )
    ours, naive, floor = (rows[k]["peak_rss_mb"] for k in ("sfr-ds", "naive", "floor"))
    print(
        f"{name:8s} sfr-ds / naive = {ours / naive:.2f}; above the import floor: "
        f"{(ours - floor) / (naive - floor):.2f}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(PREPARE), choices=list(PREPARE))
    ap.add_argument("--work", type=Path, default=None, help="inputs and outputs (default: a temp dir)")
    ap.add_argument("--no-verified", dest="verified", action="store_false", help="skip the verified run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.adapter, args.out)
    work = args.work or Path(tempfile.mkdtemp(prefix="merge_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPU cores; work dir {work}", flush=True)
    for name in args.models:
        bench(name, work, args.verified)


if __name__ == "__main__":
    main()
