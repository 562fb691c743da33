"""LoRA r=8 on every linear layer of Mistral-7B: the SFR blog's ~21M trainable parameters."""

import torch
from shapes import MISTRAL_7B
from transformers import AutoConfig, AutoModel

from sfr_ds.config import LoraConfig
from sfr_ds.model import add_lora, count_parameters


def test_mistral_7b_lora_has_about_21m_trainable_parameters():
    with torch.device("meta"):
        backbone = AutoModel.from_config(AutoConfig.for_model(**MISTRAL_7B))
        model = add_lora(backbone, LoraConfig(r=8))
    trainable, total = count_parameters(model)
    h, kv, ffn = 4096, 1024, 14336
    # r * (in + out) for q, k, v, o, gate, up, down, in each of 32 layers
    per_layer = 8 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + ffn) + (ffn + h))
    assert trainable == 32 * per_layer == 20_971_520  # "21M trainable parameters" (SFR blog)
    assert 7.1e9 < total < 7.3e9
