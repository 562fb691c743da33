"""The encode path that mining and evaluation use gives the trained model's own embeddings."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, sfr_ds

from sfr_ds.config import load_config
from sfr_ds.encode import TextEncoder

pytestmark = pytest.mark.integration


def test_encoder_from_run_equals_base_plus_adapter_by_hand(tmp_path):
    """TextEncoder.from_run (batched, length-sorted) against an independent reference: the run's
    saved base loaded by transformers, its adapter applied by peft, each text formatted and
    tokenized by hand with EOS appended, the last token's state pooled and normalised."""
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    sfr_ds("train", TINY, "optim.max_steps=2", "--output-dir", tmp_path)
    enc = TextEncoder.from_run(tmp_path, batch_size=2, device="cpu")
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
    again = TextEncoder.from_run(tmp_path, batch_size=2, device="cpu").encode_queries(
        queries, "Retrieve passages"
    )
    np.testing.assert_array_equal(again, got)
    docs = enc.encode_documents(["doc one", "doc two"])
    assert docs.shape == (2, 64) and abs(float((docs**2).sum(1).mean()) - 1) < 1e-5
