"""Backbone + LoRA + pooling + L2 normalisation: texts' token ids in, unit embeddings out.

Two input layouts: padded ``Tokens`` ([B, L] with a mask), and ``Packed`` (the real tokens of many
sequences back to back in one row, positions restarting per sequence). A backbone loaded with
``packed=True`` computes attention only within each sequence through ``packed_attention``, which
transformers dispatches to for every layer (the backbone must route attention through
``ALL_ATTENTION_FUNCTIONS`` and pass its keyword arguments on; Mistral, Llama and BERT are tested, and
one that does not fails loudly rather than mixing sequences).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoraConfig, ModelConfig
from .data.collate import Segments
from .zoo import resolve_model_path

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PACKED_ATTENTION = "sfr_packed"  # the name packed_attention is registered under in transformers


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


# ----------------------------------------------------------------------------- packed attention


def packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    segments: Segments | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention over a packed row: query [1, H, T, D], key/value [1, Hkv, T, D] -> [1, T, H, D].

    Each token attends only within its own sequence (causally where ``module.is_causal``), which
    is what the same sequence alone, or right-padded in a batch, would compute.
    """
    if segments is None:
        raise ValueError(
            f"{type(module).__name__}: this backbone was loaded for packed inputs and needs "
            "'segments' in every attention call; feed it Packed batches (or load it with "
            "packed=False), and check that the architecture passes attention kwargs on"
        )
    if sliding_window is not None and segments.max_len > sliding_window:
        raise NotImplementedError(
            f"a packed sequence of {segments.max_len} tokens is longer than the "
            f"sliding window ({sliding_window}); switch gradcache.packing off"
        )
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, heads, D]
    causal = getattr(module, "is_causal", True)
    out = _varlen_attention(q, k, v, segments, causal, scaling, dropout)
    return out.unsqueeze(0), None


def _varlen_attention(
    q, k, v, segments: Segments, causal: bool, scale: float | None, dropout: float
) -> torch.Tensor:
    """[T, heads, D] -> [T, H, D]: flash-attn's varlen kernel, else PyTorch's, else sdpa per sequence."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu, L = segments.cu_seqlens, segments.max_len
        flash = _flash_attn_varlen()
        if flash is not None:
            return flash(q, k, v, cu, cu, L, L, dropout_p=dropout, softmax_scale=scale, causal=causal)
        plan = _torch_varlen_kwargs(causal, scale, q.size(1) != k.size(1), q.size(-1))
        if plan is not None and not dropout:  # PyTorch's varlen kernel has no dropout
            from torch.nn.attention.varlen import varlen_attn

            kwargs, expand = plan
            if expand:
                k, v = repeat_kv_heads(k, q.size(1)), repeat_kv_heads(v, q.size(1))
            return varlen_attn(q, k, v, cu, cu, L, L, **kwargs)
    return _padded_attention(q, k, v, segments, causal, scale, dropout)


def _padded_attention(
    q, k, v, segments: Segments, causal: bool, scale: float | None, dropout: float
) -> torch.Tensor:
    """sdpa over the chunk's sequences scattered into [n, L] and gathered back.

    Only attention sees the padding (linear layers, most of the FLOPs, see real tokens alone), and
    length-sorted chunks keep it small. Right padding means a causal mask already hides it from
    every real token; a bidirectional encoder gets an explicit key mask. Measured on CPU this is
    faster than a block-diagonal mask over the whole row or a loop over the sequences, and flex
    attention has no CPU backward.
    """
    n, L, index = len(segments), segments.max_len, segments.slots()

    def unpack(x: torch.Tensor) -> torch.Tensor:  # [T, h, D] -> [n, h, L, D]
        grid = x.new_zeros(n * L, x.size(1), x.size(2)).index_copy(0, index, x)
        return grid.view(n, L, x.size(1), x.size(2)).transpose(1, 2)

    mask = None
    if not causal:
        lengths = (segments.cu_seqlens[1:] - segments.cu_seqlens[:-1]).unsqueeze(1)
        mask = (torch.arange(L, device=q.device) < lengths)[:, None, None, :]
    out = F.scaled_dot_product_attention(
        unpack(q),
        unpack(k),
        unpack(v),
        attn_mask=mask,
        dropout_p=dropout,
        is_causal=causal,
        scale=scale,
        enable_gqa=q.size(1) != k.size(1),
    )
    return out.transpose(1, 2).reshape(n * L, q.size(1), q.size(2)).index_select(0, index)


@functools.cache
def _flash_attn_varlen():
    """flash-attn's ``flash_attn_varlen_func`` where the package is installed, else None."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


@functools.cache
def _torch_varlen_params() -> frozenset:
    """Parameter names of ``torch.nn.attention.varlen.varlen_attn`` (CUDA only; empty where missing)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


def _torch_varlen_kwargs(
    causal: bool, scale: float | None, gqa: bool, head_dim: int
) -> tuple[dict, bool] | None:
    """(keyword arguments for PyTorch's ``varlen_attn``, whether K/V heads must first be repeated to
    the query's count), or None where this torch lacks the kernel or what the call needs. Its
    signature changed between releases: 2.10 has ``is_causal`` and no ``scale``, 2.11 ``scale`` and
    ``window_size`` instead, 2.12 added ``enable_gqa``."""
    params = _torch_varlen_params()
    if "window_size" in params:
        kwargs = {"window_size": (-1, 0) if causal else (-1, -1)}
    elif "is_causal" in params:
        kwargs = {"is_causal": causal}
    else:
        return None
    if scale is not None and "scale" in params:
        kwargs["scale"] = scale
    elif scale is not None and not math.isclose(scale, head_dim**-0.5, rel_tol=1e-6):
        return None  # a non-default scale this kernel cannot take
    expand = gqa and "enable_gqa" not in params
    if gqa and not expand:
        kwargs["enable_gqa"] = True
    return kwargs, expand


def repeat_kv_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[T, h_kv, D] -> [T, heads, D], each K/V head serving the ``heads // h_kv`` query heads next to
    each other (transformers' ``repeat_kv`` grouping), for kernels without grouped-query attention."""
    return x.repeat_interleave(heads // x.size(1), dim=1)


def _register_packed_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)


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


def load_backbone(cfg: ModelConfig, packed: bool = False) -> nn.Module:
    """A transformers AutoModel (no LM head), from weights or built randomly from ``random_init``.

    ``packed``: attention through ``packed_attention``, for ``Packed`` inputs only. Transformers
    builds no mask for an attention it has no mask function for, so nothing of size T x T is made
    and nothing is read back from the device (its own packed-sequence detection does both).
    """
    from transformers import AutoConfig, AutoModel

    if packed:
        _register_packed_attention()
    attn = PACKED_ATTENTION if packed else pick_attention(cfg.attn_implementation)
    dtype = DTYPES[cfg.dtype]
    if cfg.random_init is not None:
        arch = dict(cfg.random_init)
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
        model = AutoModel.from_config(config, attn_implementation=attn, dtype=dtype)
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


def append_eos(model_cfg: ModelConfig) -> bool:
    return model_cfg.pooling == "last" if model_cfg.append_eos is None else model_cfg.append_eos
