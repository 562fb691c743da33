"""Text formatting and tokenization, shared by training, mining and evaluation.

Queries read ``Instruct: {instruction}\\nQuery: {query}``; documents carry no instruction. For
last-token pooling the EOS token is appended by hand after truncation: some tokenizers (recent
transformers for Llama/Mistral among them) do not add it, and the pooled state must be the one
that has seen the whole text.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


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

    def slice(self, start: int, stop: int) -> "Tokens":
        """Rows [start, stop), trimmed to the longest sequence among them."""
        mask = self.attention_mask[start:stop]
        width = max(int(mask.sum(1).max()), 1)
        return Tokens(self.input_ids[start:stop, :width], mask[:, :width])

    def to(self, device) -> "Tokens":
        return Tokens(self.input_ids.to(device, non_blocking=True),
                      self.attention_mask.to(device, non_blocking=True))


def pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id
    return 0 if pid is None else pid


def tokenize(tokenizer, texts: list[str], max_len: int, append_eos: bool) -> Tokens:
    """Tokenize with the tokenizer's special tokens, truncate to ``max_len`` including EOS, pad right."""
    if append_eos and tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no EOS token, but last-token pooling "
                         "needs one (set model.append_eos=false or use another tokenizer)")
    room = max_len - 1 if append_eos else max_len
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=room,
                    padding=False)["input_ids"]
    if append_eos:
        eos = tokenizer.eos_token_id
        ids = [(x if x and x[-1] == eos else x + [eos]) for x in ids]
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    return Tokens(out, mask)
