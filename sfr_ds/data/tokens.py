"""Text formatting and tokenization, shared by training, mining and evaluation.

Queries read ``Instruct: {instruction}\\nQuery: {query}``; documents carry no instruction. For
last-token pooling the EOS token is appended by hand after truncation: some tokenizers (recent
transformers for Llama/Mistral among them) do not add it, and the pooled state must be the one
that has seen the whole text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def format_query(query: str, instruction: str) -> str:
    return f"Instruct: {instruction}\nQuery: {query}" if instruction else query


@dataclass
class Tokens:
    input_ids: torch.Tensor  # [B, L] int64, right-padded
    attention_mask: torch.Tensor  # [B, L] int64

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def __len__(self) -> int:
        return self.input_ids.size(0)

    def slice(self, start: int, stop: int) -> Tokens:
        """Rows [start, stop), trimmed to the longest sequence among them."""
        mask = self.attention_mask[start:stop]
        width = max(int(mask.sum(1).max()), 1)
        return Tokens(self.input_ids[start:stop, :width], mask[:, :width])

    def to(self, device) -> Tokens:
        return Tokens(
            self.input_ids.to(device, non_blocking=True), self.attention_mask.to(device, non_blocking=True)
        )

    def lengths(self) -> list[int]:
        return self.attention_mask.sum(1).tolist()

    def pack(self, rows: Sequence[int]) -> Packed:
        """Rows ``rows``, in that order, with their padding dropped and real tokens back to back."""
        index = torch.as_tensor(rows)
        mask = self.attention_mask[index].bool()
        lengths = mask.sum(1)
        positions = mask.cumsum(1) - 1  # restarts at 0 for every sequence, whichever side was padded
        segments = Segments(
            position_ids=positions[mask].unsqueeze(0),
            seq_ids=torch.arange(len(rows)).repeat_interleave(lengths),
            cu_seqlens=F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32),
            max_len=int(lengths.max()),
        )
        return Packed(self.input_ids[index][mask].unsqueeze(0), segments)


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host -> device without making the host wait: pinned memory lets the copy run asynchronously."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@dataclass
class Segments:
    """Where each sequence of a packed row lies, for variable-length attention and per-sequence pooling.

    Everything is computed on the host when packing, so neither needs to read the device back.
    """

    position_ids: torch.Tensor  # [1, T] int64, restarting at 0 for every sequence
    seq_ids: torch.Tensor  # [T] int64, the sequence each token belongs to
    cu_seqlens: torch.Tensor  # [n + 1] int32, sequence boundaries (flash-attn's layout)
    max_len: int  # the longest sequence

    def __len__(self) -> int:
        return self.cu_seqlens.numel() - 1

    def slots(self) -> torch.Tensor:
        """[T]: each token's place in the right-padded [n, max_len] grid of the same sequences."""
        return self.seq_ids * self.max_len + self.position_ids[0]

    def to(self, device) -> Segments:
        return Segments(
            to_device(self.position_ids, device),
            to_device(self.seq_ids, device),
            to_device(self.cu_seqlens, device),
            self.max_len,
        )


@dataclass
class Packed:
    """Sequences packed into one row: [1, T] real tokens, no padding, attention kept per sequence."""

    input_ids: torch.Tensor  # [1, T] int64
    segments: Segments

    def to(self, device) -> Packed:
        return Packed(to_device(self.input_ids, device), self.segments.to(device))


def pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id
    return 0 if pid is None else pid


def adds_eos(tokenizer) -> bool:
    """Whether the tokenizer ends every encoding with EOS by itself (checked once per tokenizer)."""
    cached = getattr(tokenizer, "_sfr_ds_adds_eos", None)
    if cached is None:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        cached = bool(ids) and ids[-1] == tokenizer.eos_token_id
        tokenizer._sfr_ds_adds_eos = cached
    return cached


def token_ids(tokenizer, texts: list[str], max_len: int, append_eos: bool) -> list[list[int]]:
    """Each text's ids with the tokenizer's special tokens, truncated to ``max_len`` including EOS."""
    if append_eos and tokenizer.eos_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no EOS token, but last-token pooling "
            "needs one (set model.append_eos=false or use another tokenizer)"
        )
    # room for the EOS we append, unless the tokenizer appends it itself (a merged model's does)
    room = max_len - 1 if append_eos and not adds_eos(tokenizer) else max_len
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=room, padding=False)[
        "input_ids"
    ]
    if append_eos:
        eos = tokenizer.eos_token_id
        ids = [(x if x and x[-1] == eos else x + [eos]) for x in ids]
    return ids


def tokenize(tokenizer, texts: list[str], max_len: int, append_eos: bool) -> Tokens:
    """``token_ids``, right-padded into one batch."""
    return pad_ids(token_ids(tokenizer, texts, max_len, append_eos), pad_id(tokenizer))


def pad_ids(ids: Sequence[Sequence[int]], pad: int) -> Tokens:
    """Sequences of ids right-padded with ``pad`` to the longest."""
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return Tokens(out, mask)


def pack_ids(ids: Sequence[Sequence[int]]) -> Packed:
    """Sequences of ids back to back in one row, as ``Tokens.pack`` makes them from a padded batch."""
    lengths = torch.tensor([len(x) for x in ids])
    return Packed(
        torch.tensor([t for x in ids for t in x], dtype=torch.long).unsqueeze(0),
        Segments(
            position_ids=torch.cat([torch.arange(n) for n in lengths.tolist()]).unsqueeze(0),
            seq_ids=torch.arange(len(ids)).repeat_interleave(lengths),
            cu_seqlens=F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32),
            max_len=int(lengths.max()),
        ),
    )


def token_budget_chunks(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped into chunks of at most ``budget`` tokens, longest sequences first.

    Sorting puts sequences of similar length together (even work for the attention kernels, little
    to pad where attention runs padded) and greedy filling of sorted lengths leaves each chunk
    short by less than one sequence. A sequence longer than ``budget`` gets a chunk of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    used = 0
    for i in order:
        if not chunks or used + lengths[i] > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += lengths[i]
    return chunks
