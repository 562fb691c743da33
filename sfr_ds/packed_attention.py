"""Attention over packed rows: many sequences' real tokens back to back, attention kept per sequence.

``packed_attention`` is registered with transformers as an attention implementation
(``PACKED_ATTENTION``), so every layer of a backbone loaded for packed inputs calls it with the
``Segments`` of its row. On a GPU it runs flash-attn's varlen kernel where installed, else
PyTorch's; elsewhere (and for dropout where PyTorch's kernel has none) sdpa over the chunk's
sequences scattered into a padded grid. Nothing of size T x T is built and nothing is read back
from the device.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from .data.tokens import Segments

PACKED_ATTENTION = "sfr_packed"  # the name packed_attention is registered under in transformers


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


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
