"""Peak memory of a model soup of three SmolLM2-135M adapters made full weights, against one model's size.

Each way runs in a fresh process that reports its own peak resident set size (VmHWM, which counts
mapped file pages it touched as well as allocations), as ``merge_memory.py`` measures merges:

  floor           imports torch, transformers, peft and sfr_ds.soup, then stops
  soup+merge      ``soup`` (linear, 3 adapters -> one rank-24 adapter), then ``merge(..., check=False)``
  soup+merge+verify  the same with the probe-text check ``sfr-ds merge`` runs by default
  slerp           ``soup(method="slerp")`` of two adapters: full weights, base streamed tensor by tensor
  naive           each adapter merged into a freshly loaded base (``merge_and_unload``), the running
                  weighted sum of the merged models kept in fp32, then saved

Inputs: ``builtin:smollm2-135m`` (one 538 MB fp32 file); three random non-zero LoRA r=8 adapters on
every linear layer (``merge_memory.save_adapter``, each B then scaled differently so the three
differ). Output: bf16 in shards of at most 500 MB.

    python benchmarks/soup_memory.py [--work DIR]
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

from merge_memory import SHARD, peak_rss_mb, save_adapter

METHODS = ("floor", "soup+merge", "soup+merge+verify", "slerp", "naive")


def prepare(work: Path) -> list[Path]:
    """Three SmolLM2 adapters (made once; a rerun reuses them)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    from sfr_ds.zoo import resolve_model_path

    adapters = [work / f"smollm2-adapter-{i}" for i in range(3)]
    for i, adapter in enumerate(adapters):
        if (adapter / "sfr_ds.json").exists():
            continue
        model = AutoModel.from_pretrained(resolve_model_path("builtin:smollm2-135m"), dtype=torch.float32)
        save_adapter(model, "builtin:smollm2-135m", "builtin:smollm2-135m", adapter)
        weights = load_file(adapter / "adapter_model.safetensors")
        scaled = {k: v * (i + 1) if "lora_B" in k else v for k, v in weights.items()}
        save_file(scaled, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    return adapters


def naive(adapters: list[Path], out: Path) -> None:
    """The average of the merged models, computed the obvious way: one merged model at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModel

    from sfr_ds.merge.layout import write_tokenizer
    from sfr_ds.run_dir import base_model_path, read_meta
    from sfr_ds.zoo import resolve_model_path

    meta = read_meta(adapters[0])
    base = resolve_model_path(base_model_path(adapters[0], meta))
    total = None
    for adapter in adapters:
        merged = PeftModel.from_pretrained(AutoModel.from_pretrained(base, dtype=torch.float32), str(adapter))
        state = merged.merge_and_unload().state_dict()
        total = (
            {k: v / len(adapters) for k, v in state.items()}
            if total is None
            else {k: total[k] + v / len(adapters) for k, v in state.items()}
        )
        del merged, state
    model = AutoModel.from_pretrained(base, dtype=torch.bfloat16)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in total.items()})
    model.save_pretrained(str(out), max_shard_size=SHARD)
    write_tokenizer(adapters[0], out, meta)


def child(method: str, adapters: list[Path], out: Path) -> None:
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from sfr_ds.merge import merge
    from sfr_ds.soup import soup

    start, extra = time.perf_counter(), {}
    if method.startswith("soup+merge"):
        soup(adapters, out.with_name(out.name + "-adapter"))
        report = merge(
            out.with_name(out.name + "-adapter"),
            out,
            dtype="bf16",
            max_shard_size=SHARD,
            check=method.endswith("verify"),
        )
        extra = {"max_abs_diff": report.max_abs_diff}
    elif method == "slerp":
        soup(adapters[:2], out, method="slerp", t=0.5, dtype="bf16", max_shard_size=SHARD, check=False)
    elif method == "naive":
        naive(adapters, out)
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


def measure(method: str, adapters: list[Path], out: Path) -> dict:
    subprocess.run(["rm", "-rf", str(out), f"{out}.partial", f"{out}-adapter"], check=True)
    args = [sys.executable, __file__, "--child", method, "--out", str(out), "--adapters", *map(str, adapters)]
    p = subprocess.run(
        args, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false")
    )
    if p.returncode:
        raise RuntimeError(f"{method} failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="inputs and outputs (default: a temp dir)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--adapters", nargs="+", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.adapters, args.out)
    work = args.work or Path(tempfile.mkdtemp(prefix="soup_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPU cores; work dir {work}", flush=True)
    adapters = prepare(work)
    from sfr_ds.zoo import resolve_model_path

    model_mb = (Path(resolve_model_path("builtin:smollm2-135m")) / "model.safetensors").stat().st_size / 1e6
    floor = None
    for method in args.methods:
        row = measure(method, adapters, work / method.replace("+", "-"))
        peak = row["peak_rss_mb"]
        floor = peak if method == "floor" else floor
        above = f"  above the floor {(peak - floor) / model_mb:4.2f}x" if floor is not None else ""
        diff = f"  max |diff| {row['max_abs_diff']:.2e}" if row.get("max_abs_diff") is not None else ""
        print(
            f"{method:18s} peak RSS {peak:6d} MB = {peak / model_mb:4.2f}x one model ({model_mb:.0f} MB fp32)"
            f"{above}  {row['seconds']:6.1f} s{diff}",
            flush=True,
        )


if __name__ == "__main__":
    main()
