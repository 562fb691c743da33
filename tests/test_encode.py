"""The encode path that mining and evaluation use gives the trained model's own embeddings."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, sfr_ds

from sfr_ds.config import load_config
from sfr_ds.encode import TextEncoder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    sfr_ds("train", TINY, "optim.max_steps=2", "--output-dir", run)
    return run


@pytest.mark.parametrize("max_tokens", [40, None], ids=["packed", "padded"])
def test_encoder_from_run_equals_base_plus_adapter_by_hand(max_tokens, tiny_run):
    """TextEncoder.from_run (packed chunks, or padded length-sorted batches) against an independent
    reference: the run's
    saved base loaded by transformers, its adapter applied by peft, each text formatted and
    tokenized by hand with EOS appended, the last token's state pooled and normalised."""
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    tmp_path = tiny_run
    enc = TextEncoder.from_run(tmp_path, batch_size=2, device="cpu", max_tokens=max_tokens)
    queries = ["a man eats food", "what is the capital of france and why is it so large", "x"]
    got = enc.encode_queries(queries, "Retrieve passages")

    cfg = load_config(TINY)
    tok = AutoTokenizer.from_pretrained(tmp_path / "final")
    model = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tmp_path / "base_model"), tmp_path / "final"
    ).eval()
    ref = []
    for q in queries:
        ids = tok(
            f"Instruct: Retrieve passages\nQuery: {q}", truncation=True, max_length=cfg.data.query_max_len - 1
        )
        ids = torch.tensor([ids["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            ref.append(F.normalize(model(input_ids=ids).last_hidden_state[0, -1], dim=-1))
    torch.testing.assert_close(torch.from_numpy(got), torch.stack(ref), rtol=1e-5, atol=1e-6)

    # the adapter is really applied: LoRA B is non-zero after training
    lora_b = [p for n, p in enc.embedder.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)
    # the random base was kept whole (no LoRA-wrapped names): a second load gives the same model
    from safetensors.torch import load_file

    base = load_file(tmp_path / "base_model" / "model.safetensors")
    assert not [k for k in base if "lora_" in k or "base_layer" in k]
    again = TextEncoder.from_run(tmp_path, batch_size=2, device="cpu", max_tokens=max_tokens).encode_queries(
        queries, "Retrieve passages"
    )
    np.testing.assert_array_equal(again, got)
    docs = enc.encode_documents(["doc one", "doc two"])
    assert docs.shape == (2, 64) and abs(float((docs**2).sum(1).mean()) - 1) < 1e-5


def bundled_texts() -> list[str]:
    """SciFact abstracts of very different lengths, a duplicate and an empty text."""
    import json

    from conftest import ROOT

    rows = (ROOT / "sfr_ds/resources/data/eval/scifact/corpus.jsonl").read_text().splitlines()[:24]
    texts = [json.loads(r)["text"][: 40 + 37 * i] for i, r in enumerate(rows)]
    return texts + [texts[3], ""]


@pytest.mark.parametrize(
    "model,pooling",
    [("builtin:minilm", "mean"), ("builtin:smollm2-135m", "last")],
    ids=["encoder", "decoder"],
)
def test_packed_encoding_equals_padded_and_encodes_each_text_once(model, pooling):
    from sfr_ds.config import ModelConfig

    cfg = ModelConfig(name_or_path=model, pooling=pooling, dtype="fp32")
    texts = bundled_texts()
    packed = TextEncoder.from_model_config(cfg, device="cpu", max_tokens=600)
    padded = TextEncoder.from_model_config(cfg, device="cpu", batch_size=8, max_tokens=None)
    seen = []
    packed.embedder.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(len(kwargs["segments"])), with_kwargs=True
    )
    got, want = packed.encode(texts, 128), padded.encode(texts, 128)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert sum(seen) == len(texts) - 1 and len(seen) > 2  # the duplicate once; several chunks
    np.testing.assert_array_equal(got[3], got[-2])
