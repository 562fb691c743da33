"""Prompt format, explicit EOS, truncation, and pooling under both padding sides."""

import torch
from transformers import AutoTokenizer

from sfr_ds.data.tokens import format_query, tokenize
from sfr_ds.model import pool
from sfr_ds.zoo import resolve_model_path


def tiny_tok():
    return AutoTokenizer.from_pretrained(resolve_model_path("builtin:tiny-tokenizer"))


def test_query_format_and_documents_without_instruction():
    assert (
        format_query("how tall?", "Given a question, retrieve answers")
        == "Instruct: Given a question, retrieve answers\nQuery: how tall?"
    )
    assert format_query("plain", "") == "plain"


def test_eos_is_appended_after_tokenization_and_survives_truncation():
    tok = tiny_tok()
    assert tok("hello world")["input_ids"][-1] != tok.eos_token_id  # the tokenizer does not add it
    long = "word " * 500
    t = tokenize(tok, ["hello world", long], max_len=16, append_eos=True)
    assert t.input_ids.shape == (2, 16)
    for row, mask in zip(t.input_ids, t.attention_mask):
        last = int(mask.sum()) - 1
        assert row[last] == tok.eos_token_id and row[0] == tok.bos_token_id
        assert (row[last + 1 :] == tok.pad_token_id).all()
    assert int(t.attention_mask[1].sum()) == 16  # truncated text + EOS fill max_len exactly


def test_no_eos_for_encoder_pooling():
    tok = tiny_tok()
    t = tokenize(tok, ["hello world"], max_len=16, append_eos=False)
    assert tok.eos_token_id not in t.input_ids[0].tolist()


def test_last_token_pooling_right_and_left_padding():
    h = torch.randn(2, 5, 3)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.equal(pool(h, right, "last"), torch.stack([h[0, 2], h[1, 4]]))
    assert torch.equal(pool(h, left, "last"), torch.stack([h[0, 4], h[1, 4]]))
    torch.testing.assert_close(pool(h, right, "mean")[0], h[0, :3].mean(0))
    assert torch.equal(pool(h, right, "cls"), h[:, 0])
