"""The check that a full-weight folder embeds probe texts as its adapter does on the base.

Apart from the building of the folder so that any model made from an adapter (a merge, a soup)
is checked the same way. The reference is encoded by sfr-ds as in training (``TextEncoder``); the
folder as a plain transformers user loads it: its own tokenizer, ``AutoModel``, the run's pooling.
One model is in memory at a time.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from ..data.tokens import format_query
from ..encode import TextEncoder
from ..model import DTYPES, Embedder
from ..run_dir import read_meta

# The largest max |merged - (base + adapter)| over unit embeddings of the probe texts, both run in the
# output dtype, that a correct merge reaches: in fp32 the two differ by summation order only, in bf16
# by the rounding of weights and activations. The measured differences it is set from are in
# docs/benchmarks.md.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}
PROBE_QUERIES = [
    "how do vaccines train the immune system",
    "capital of australia",
    "symptoms of iron deficiency in adults",
    "what is the boiling point of water at altitude",
]
PROBE_DOCS = [
    "Canberra is the capital city of Australia.",
    "Vaccines expose the immune system to a harmless form of a pathogen so that it learns to recognise it.",
    "Fatigue, pale skin and shortness of breath are common signs of anaemia.",
    "Water boils at a lower temperature at high altitude because the air pressure is lower.",
]


def reference_embeddings(adapter: Path, dtype: str, instruction: str) -> torch.Tensor:
    """Probe embeddings of base + adapter, encoded by sfr-ds as in training."""
    encoder = TextEncoder.from_run(adapter, device="cpu", dtype=dtype)
    queries = encoder.encode_queries(PROBE_QUERIES, instruction)
    return torch.cat([torch.from_numpy(queries), torch.from_numpy(encoder.encode_documents(PROBE_DOCS))])


@torch.no_grad()
def merged_embeddings(folder: Path, meta: dict, dtype: str, instruction: str) -> torch.Tensor:
    """Probe embeddings of the merged folder as a plain transformers user gets them: its own
    tokenizer (which appends EOS) with truncation to the run's lengths, AutoModel, the run's pooling."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = Embedder(
        AutoModel.from_pretrained(str(folder), dtype=DTYPES[dtype]), meta["pooling"], meta["normalize"]
    ).eval()
    out = []
    for texts, max_len in (
        ([format_query(q, instruction) for q in PROBE_QUERIES], meta["query_max_len"]),
        (PROBE_DOCS, meta["doc_max_len"]),
    ):
        batch = tok(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        out.append(model(batch["input_ids"], batch["attention_mask"]))
    return torch.cat(out)


def verify(merged: Path, adapter: Path, dtype: str, instruction: str) -> float:
    """Max |difference| between merged and base + adapter probe embeddings; one model in memory at a time."""
    reference = reference_embeddings(adapter, dtype, instruction)
    gc.collect()
    return float((merged_embeddings(merged, read_meta(adapter), dtype, instruction) - reference).abs().max())
