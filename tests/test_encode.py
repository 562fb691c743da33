"""The encode path that mining and evaluation use gives the trained model's own embeddings."""

import numpy as np
import torch
from conftest import TINY, sfr_ds

from sfr_ds.config import load_config
from sfr_ds.data.tokens import format_query, tokenize
from sfr_ds.encode import TextEncoder


def test_encoder_from_run_matches_training_forward(tmp_path):
    sfr_ds("train", TINY, "optim.max_steps=2", "--output-dir", tmp_path)
    enc = TextEncoder.from_run(tmp_path, batch_size=3, device="cpu")
    queries = ["a man eats food", "what is the capital of france and why is it so large", "x"]
    got = enc.encode_queries(queries, "Retrieve passages")
    # independent reference: the trained weights folded in by hand-built path, one text at a time
    cfg = load_config(TINY)
    ref = []
    for q in queries:
        t = tokenize(enc.tokenizer, [format_query(q, "Retrieve passages")], cfg.data.query_max_len, True)
        assert t.input_ids[0, -1] == enc.tokenizer.eos_token_id
        with torch.no_grad():
            ref.append(enc.embedder(t.input_ids, t.attention_mask)[0])
    torch.testing.assert_close(torch.from_numpy(got), torch.stack(ref), rtol=1e-5, atol=1e-6)
    # the adapter is really applied: LoRA B is non-zero after training
    lora_b = [p for n, p in enc.embedder.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)
    # the random base was kept whole (no LoRA-wrapped names): a second load gives the same model
    from safetensors.torch import load_file

    base = load_file(tmp_path / "base_model" / "model.safetensors")
    assert not [k for k in base if "lora_" in k or "base_layer" in k]
    again = TextEncoder.from_run(tmp_path, device="cpu").encode_queries(queries, "Retrieve passages")
    np.testing.assert_array_equal(again, got)
    docs = enc.encode_documents(["doc one", "doc two"])
    assert docs.shape == (2, 64) and abs(float((docs**2).sum(1).mean()) - 1) < 1e-5
