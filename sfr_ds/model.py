"""Backbone + LoRA + pooling + L2 normalisation: texts' token ids in, unit embeddings out.

Two input layouts: padded ``Tokens`` ([B, L] with a mask), and ``Packed`` (the real tokens of many
sequences back to back in one row, positions restarting per sequence). A backbone loaded with
``packed=True`` computes attention only within each sequence (``sfr_ds.packed_attention``), which
transformers dispatches to for every layer (the backbone must route attention through
``ALL_ATTENTION_FUNCTIONS`` and pass its keyword arguments on; Mistral, Llama and BERT are tested, and
one that does not fails loudly rather than mixing sequences).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from . import packed_attention
from .config import LoraConfig, ModelConfig
from .data.tokens import Segments
from .zoo import resolve_model_path

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


def pool_packed(hidden: torch.Tensor, segments: Segments, how: str) -> torch.Tensor:
    """hidden [T, H] of a packed row -> [n, H]: each sequence's last, mean or first token.

    The mean sums over the padded grid, as ``pool`` does: no atomic adds, so a GradCache replay
    reproduces the cache pass bit for bit on GPU too.
    """
    starts, ends = segments.cu_seqlens[:-1].long(), segments.cu_seqlens[1:].long()
    if how == "last":
        return hidden[ends - 1]
    if how == "mean":
        n, L, H = len(segments), segments.max_len, hidden.size(1)
        grid = hidden.new_zeros(n * L, H).index_copy(0, segments.slots(), hidden).view(n, L, H)
        return grid.sum(1) / (ends - starts).unsqueeze(1).to(hidden.dtype)
    if how == "cls":
        return hidden[starts]
    raise ValueError(f"unknown pooling {how!r}; expected last, mean or cls")


class Embedder(nn.Module):
    """Wraps a transformers backbone (optionally a PEFT model) as a text -> unit-vector encoder.

    Called with ``input_ids`` and ``attention_mask`` (padded ``Tokens``) or with ``input_ids`` and
    ``segments`` (``Packed``, on a backbone loaded with ``packed=True``); both give the same embeddings.
    """

    def __init__(self, backbone: nn.Module, pooling: str, normalize: bool = True):
        super().__init__()
        self.backbone, self.pooling, self.normalize = backbone, pooling, normalize

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        segments: Segments | None = None,
    ) -> torch.Tensor:
        if segments is None:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            emb = pool(hidden, attention_mask, self.pooling)
        else:  # ``segments`` reaches packed_attention in every layer as a keyword argument
            hidden = self.backbone(
                input_ids=input_ids, position_ids=segments.position_ids, segments=segments
            ).last_hidden_state
            emb = pool_packed(hidden[0], segments, self.pooling)
        emb = emb.float()
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


def backbone_config(cfg: ModelConfig):
    """The backbone's transformers config (its shape), without loading any weights."""
    from transformers import AutoConfig

    if cfg.random_init is not None:
        arch = dict(cfg.random_init)
        return AutoConfig.for_model(arch.pop("model_type"), **arch)
    return AutoConfig.from_pretrained(
        resolve_model_path(cfg.name_or_path), trust_remote_code=cfg.trust_remote_code
    )


def load_backbone(cfg: ModelConfig, packed: bool = False) -> nn.Module:
    """A transformers AutoModel (no LM head), from weights or built randomly from ``random_init``.

    ``packed``: attention through ``packed_attention``, for ``Packed`` inputs only. Transformers
    builds no mask for an attention it has no mask function for, so nothing of size T x T is made
    and nothing is read back from the device (its own packed-sequence detection does both).
    """
    from transformers import AutoModel

    if packed:
        packed_attention.register()
    attn = packed_attention.PACKED_ATTENTION if packed else pick_attention(cfg.attn_implementation)
    dtype = DTYPES[cfg.dtype]
    if cfg.random_init is not None:
        model = AutoModel.from_config(backbone_config(cfg), attn_implementation=attn, dtype=dtype)
    else:
        model = AutoModel.from_pretrained(
            resolve_model_path(cfg.name_or_path),
            dtype=dtype,
            attn_implementation=attn,
            trust_remote_code=cfg.trust_remote_code,
        )
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def add_lora(backbone: nn.Module, cfg: LoraConfig) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias="none",
    )
    return get_peft_model(backbone, peft_cfg)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def build_embedder(
    model_cfg: ModelConfig, lora_cfg: LoraConfig | None, packed: bool = False, save_base_to: str | None = None
) -> Embedder:
    """Backbone (+ LoRA) + pooling. ``save_base_to`` keeps the backbone's weights before LoRA wraps
    its layers: a randomly initialised base exists nowhere else, and merge/eval need it."""
    backbone = load_backbone(model_cfg, packed)
    if save_base_to is not None:
        backbone.save_pretrained(save_base_to)
    if lora_cfg is not None and lora_cfg.enabled:
        backbone = add_lora(backbone, lora_cfg)
    return Embedder(backbone, model_cfg.pooling, model_cfg.normalize)
