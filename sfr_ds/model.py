"""Backbone + LoRA + pooling + L2 normalisation: texts' token ids in, unit embeddings out."""
from __future__ import annotations

import importlib.util
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoraConfig, ModelConfig
from .zoo import resolve_model_path

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """hidden [B, L, H], mask [B, L] -> [B, H]. 'last' finds the last real token under either padding side."""
    if how == "last":
        positions = torch.arange(mask.size(1), device=mask.device)
        last = (mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1)
    if how == "cls":
        return hidden[:, 0]
    raise ValueError(f"unknown pooling {how!r}; expected last, mean or cls")


class Embedder(nn.Module):
    """Wraps a transformers backbone (optionally a PEFT model) as a text -> unit-vector encoder."""

    def __init__(self, backbone: nn.Module, pooling: str, normalize: bool = True):
        super().__init__()
        self.backbone, self.pooling, self.normalize = backbone, pooling, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = pool(hidden, attention_mask, self.pooling).float()
        return F.normalize(emb, dim=-1) if self.normalize else emb


def pick_attention(requested: str) -> str:
    """flash_attention_2 where flash-attn is importable on CUDA, else PyTorch's sdpa."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.tokenizer or cfg.name_or_path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_backbone(cfg: ModelConfig) -> nn.Module:
    """A transformers AutoModel (no LM head), from weights or built randomly from ``random_init``."""
    from transformers import AutoConfig, AutoModel

    attn = pick_attention(cfg.attn_implementation)
    dtype = DTYPES[cfg.dtype]
    if cfg.random_init is not None:
        arch = dict(cfg.random_init)
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
        model = AutoModel.from_config(config, attn_implementation=attn, dtype=dtype)
    else:
        model = AutoModel.from_pretrained(resolve_model_path(cfg.name_or_path), dtype=dtype,
                                          attn_implementation=attn,
                                          trust_remote_code=cfg.trust_remote_code)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def add_lora(backbone: nn.Module, cfg: LoraConfig) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=cfg.target_modules, bias="none")
    return get_peft_model(backbone, peft_cfg)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def build_embedder(model_cfg: ModelConfig, lora_cfg: LoraConfig | None) -> Embedder:
    backbone = load_backbone(model_cfg)
    if lora_cfg is not None and lora_cfg.enabled:
        backbone = add_lora(backbone, lora_cfg)
    return Embedder(backbone, model_cfg.pooling, model_cfg.normalize)


def append_eos(model_cfg: ModelConfig) -> bool:
    return model_cfg.pooling == "last" if model_cfg.append_eos is None else model_cfg.append_eos
