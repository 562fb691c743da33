"""Activation memory per real token of the packed training forward, at a model's real width, on any device.

GradCache keeps one chunk's autograd graph alive at a time, so ``gradcache.chunk_tokens`` x (bytes
saved for backward per token) + the weights is what a GPU must hold. This counts those bytes
exactly with autograd's saved-tensor hooks (each storage once, weights left out) for a backbone of
1 and of 2 layers at the shape's full width, LoRA r=8 with dropout on every linear layer, packed
sequences: the difference is one layer's bytes, and the whole model is the 1-layer run + (layers -
1) of them (the first layer saves less: nothing below it needs a gradient). Devices differ in
details: CPU dropout keeps its mask in the input's dtype where CUDA's keeps one byte, and
attention's saved state depends on the kernel ``sfr_ds.packed_attention`` picks.

    python benchmarks/activation_memory.py --shape mistral-7b --tokens 512      # 20 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def saved_bytes(shape: dict, layers: int, tokens: int, seq_len: int, dtype: str, device) -> int:
    """Bytes autograd saves for backward in one packed forward of ``tokens`` tokens."""
    import torch

    from sfr_ds.config import LoraConfig, ModelConfig
    from sfr_ds.data.tokens import Tokens
    from sfr_ds.model import DTYPES, build_embedder

    cfg = ModelConfig(
        name_or_path="random", random_init=dict(shape, num_hidden_layers=layers), pooling="last", dtype=dtype
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = build_embedder(cfg, LoraConfig(), packed=True)
    for w in model.parameters():  # as DeepSpeed's bf16 mode casts them (peft keeps LoRA in fp32)
        w.data = w.data.to(DTYPES[dtype])
    n = tokens // seq_len
    ids = torch.randint(4, shape["vocab_size"], (n, seq_len))
    batch = Tokens(ids, torch.ones_like(ids)).pack(list(range(n))).to(device)
    weights = {q.untyped_storage().data_ptr() for q in model.parameters()}  # saved, but not activations
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**vars(batch))
    return sum(seen.values())


def main() -> None:
    import torch
    from train_step import SHAPES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="mistral-7b")
    p.add_argument("--tokens", type=int, default=512, help="real tokens in the packed chunk")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per packed sequence")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = SHAPES[args.shape][0]
    one, two = (saved_bytes(shape, k, args.tokens, args.seq_len, args.dtype, device) for k in (1, 2))
    per_layer = (two - one) / args.tokens  # a layer above the first
    per_token = (one + (shape["num_hidden_layers"] - 1) * (two - one)) / args.tokens
    print(
        f"shape {args.shape} ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}), "
        f"{args.dtype}, "
        f"{device}, {args.tokens} tokens in sequences of {args.seq_len}: {per_layer / 2**10:.1f} KiB per "
        f"layer per token ({one / args.tokens / 2**10:.1f} KiB for the 1-layer model: below the first "
        f"layer nothing needs a gradient) -> {per_token / 2**20:.2f} MiB per token for the whole model"
    )
    for budget in (1024, 2048, 4096, 8192):
        print(f"  chunk_tokens {budget:>5}: {budget * per_token / 2**30:6.1f} GiB of saved activations")


if __name__ == "__main__":
    main()
