"""Encoding throughput: sfr-ds's packed chunks vs its padded batches vs sentence-transformers' encode.

The same texts (bundled SciFact abstracts: the eval corpus, then the training records' documents),
the same model, the same outputs, the same CPU threads, in one process:

  packed   ``TextEncoder`` as mining and eval run it: texts packed longest first into chunks of at
           most ``--max-tokens`` real tokens, varlen attention, nothing computed on padding
  padded   ``TextEncoder(max_tokens=None)``: batches of ``--batch-size`` texts sorted by length
  st       ``SentenceTransformer.encode(batch_size=--batch-size)`` (it sorts by length too) on the
           same model laid out as sfr-ds's merged folders are (last-token pooling with the EOS its
           tokenizer appends, or MiniLM's own mean pooling)

Each mode encodes every text once untimed (warm-up), then ``--repeats`` timed passes; the median
pass counts. Documents/s and real tokens/s (tokens as the model reads them, EOS included), and the
largest difference of each mode's embeddings from packed's (they must agree: same model, same
truncation). Peer: sentence-transformers (the ``bench`` extra).

    python benchmarks/encode_throughput.py                              # MiniLM and SmolLM2, ~10 min
    python benchmarks/encode_throughput.py --models minilm --texts 600
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sfr_ds" / "resources" / "data"
MODELS = {"minilm": ("builtin:minilm", "mean"), "smollm2": ("builtin:smollm2-135m", "last")}


def abstracts(n: int) -> list[str]:
    """Up to ``n`` distinct SciFact abstracts bundled with the package."""
    texts = [json.loads(line)["text"] for line in (DATA / "eval" / "scifact" / "corpus.jsonl").open()]
    for line in (DATA / "scifact_train.jsonl").open():
        record = json.loads(line)
        texts += record["pos"] + record.get("neg", [])
    return list(dict.fromkeys(t for t in texts if t.strip()))[:n]


def sentence_transformer(name: str, pooling: str, max_len: int):
    """The model as sentence-transformers loads sfr-ds's merged folders: for last-token pooling a
    tokenizer that appends EOS after truncation (``merge.layout.write_tokenizer``), then Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    from sfr_ds.merge.layout import ST_POOLING, write_tokenizer
    from sfr_ds.zoo import resolve_model_path

    path = resolve_model_path(name)
    if pooling == "mean":
        model = SentenceTransformer(path, device="cpu")
        model.max_seq_length = max_len
        return model
    tokenizer = Path(tempfile.mkdtemp(prefix="st-tokenizer-"))
    write_tokenizer(Path(path), tokenizer, {"append_eos": True, "doc_max_len": max_len})
    transformer = modules.Transformer(  # plain text in, as merged folders say (no chat template)
        path,
        max_seq_length=max_len,
        tokenizer_name_or_path=str(tokenizer),
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
    )
    dim = transformer.get_embedding_dimension()
    return SentenceTransformer(
        modules=[transformer, modules.Pooling(dim, pooling_mode=ST_POOLING[pooling]), modules.Normalize()],
        device="cpu",
    )


def timed(encode, texts: list[str], repeats: int) -> tuple[float, np.ndarray]:
    """(median seconds of ``repeats`` passes after one untimed pass, the embeddings)."""
    emb = encode(texts)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        emb = encode(texts)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), np.asarray(emb, dtype=np.float32)


def run_model(key: str, texts: list[str], args) -> list[dict]:
    from sfr_ds.config import ModelConfig
    from sfr_ds.data.tokens import token_ids
    from sfr_ds.encode import TextEncoder

    name, pooling = MODELS[key]
    cfg = ModelConfig(name_or_path=name, pooling=pooling, dtype="fp32")
    packed = TextEncoder.from_model_config(cfg, device="cpu", max_tokens=args.max_tokens)
    padded = TextEncoder.from_model_config(cfg, device="cpu", batch_size=args.batch_size, max_tokens=None)
    st = sentence_transformer(name, pooling, args.max_len)
    tokens = sum(len(x) for x in token_ids(packed.tokenizer, texts, args.max_len, packed.settings.append_eos))
    modes = {
        "packed": lambda t: packed.encode(t, args.max_len),
        "padded": lambda t: padded.encode(t, args.max_len),
        "st": lambda t: st.encode(t, batch_size=args.batch_size, convert_to_numpy=True),
    }
    rows, reference = [], None
    for mode, encode in modes.items():
        seconds, emb = timed(encode, texts, args.repeats)
        reference = emb if reference is None else reference
        rows.append(
            {
                "model": key,
                "mode": mode,
                "texts": len(texts),
                "tokens": tokens,
                "seconds": seconds,
                "max_abs_diff": float(np.abs(emb - reference).max()),
            }
        )
        print(f"# {json.dumps(rows[-1])}", flush=True)
    return rows


def table(rows: list[dict], args) -> str:
    lines = [
        f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; texts up to {args.max_len} tokens; packed chunks of "
        f"{args.max_tokens} tokens, padded and sentence-transformers batches of {args.batch_size} texts",
        "| model | mode | texts | real tokens | s | docs/s | tokens/s | vs st | max abs diff vs packed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    st = {r["model"]: r["seconds"] for r in rows if r["mode"] == "st"}
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['texts']} | {r['tokens']:,} | {r['seconds']:.2f} "
            f"| {r['texts'] / r['seconds']:.1f} | {r['tokens'] / r['seconds']:,.0f} "
            f"| {st[r['model']] / r['seconds']:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="minilm,smollm2", help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--texts", type=int, default=300, help="distinct abstracts to encode")
    p.add_argument("--max-len", type=int, default=256, help="tokens per text (truncation)")
    p.add_argument("--max-tokens", type=int, default=8192, help="packed: real tokens per chunk")
    p.add_argument("--batch-size", type=int, default=32, help="padded and st: texts per batch")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per mode (median)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    texts = abstracts(args.texts)
    rows = [r for key in args.models.split(",") for r in run_model(key, texts, args)]
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
