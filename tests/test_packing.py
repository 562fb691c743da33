"""Packing is exact: packed and padded encodings agree, chunks keep their budget, gradients match.

Packed = the real tokens of a chunk in one row, positions restarting per sequence, attention kept
within each sequence (``packed_attention``; on CPU sdpa over the unpacked chunk). Decoders (Mistral,
Llama; causal) and an encoder (BERT; bidirectional) are packed exactly, no padding fallback needed.
"""

import functools
import itertools
import json
import math
import random

import pytest
import torch
from conftest import ROOT, TINY, rel_diff, torchrun_worker
from host_reads import HostReads
from shapes import TINY_MISTRAL

from sfr_ds.config import ConfigError, LoraConfig, ModelConfig, load_config
from sfr_ds.data.tokens import tokenize
from sfr_ds.forward_backward import (
    ChunkPolicy,
    _in_batch_order,
    gradcache_step,
    loss_and_grads,
    token_budget_chunks,
)
from sfr_ds.loss import InfoNCE
from sfr_ds.model import build_embedder, load_tokenizer

TINY_ARCH = {k: v for k, v in TINY_MISTRAL.items() if k != "model_type"}
ARCHS = {
    "mistral": (dict(model_type="mistral", **TINY_ARCH), "last"),
    "llama": (dict(model_type="llama", **TINY_ARCH), "last"),
    "bert": (
        dict(
            TINY_ARCH,
            model_type="bert",
            pad_token_id=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        "mean",
    ),
}
REL = 1e-5


def texts() -> list[str]:
    """Short queries and long passages of the tiny data: lengths from a few tokens to the cap."""
    rows = [json.loads(line) for line in (ROOT / "sfr_ds/resources/data/tiny.jsonl").read_text().splitlines()]
    return [r["query"] for r in rows[:10]] + [r["pos"][0] for r in rows[:6]] + ["a", "b c"]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    return load_tokenizer(ModelConfig(name_or_path="builtin:tiny-tokenizer"))


def all_tokens(pooling: str):
    """The texts above, tokenized as training does for this pooling."""
    return tokenize(tiny_tokenizer(), texts(), max_len=96, append_eos=pooling == "last")


def small_step(pooling: str, device: str = "cpu"):
    """6 queries and 12 documents (a positive and a negative each) with their InfoNCE."""
    tok, eos = tiny_tokenizer(), pooling == "last"
    queries, docs = tokenize(tok, texts()[:6], 64, eos), tokenize(tok, texts()[4:16], 64, eos)
    return (
        queries,
        docs,
        InfoNCE(0.05).by_rows(torch.arange(6, device=device) * 2, torch.ones(6, 12, dtype=torch.bool)),
    )


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")),
]


def with_lora_b(model):
    """peft starts LoRA B at zero, which hides the adapter (and its dropout) from every output."""
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return model


def embedders(arch: dict, pooling: str):
    """The same weights (LoRA B made non-zero so the adapter counts) as a padded and a packed model."""
    cfg = ModelConfig(name_or_path="tiny", random_init=arch, pooling=pooling, dtype="fp32")
    torch.manual_seed(0)
    padded = with_lora_b(build_embedder(cfg, LoraConfig(dropout=0.0)))
    packed = build_embedder(cfg, LoraConfig(dropout=0.0), packed=True)
    packed.load_state_dict(padded.state_dict())
    return padded, packed


def lora_grads(model) -> torch.Tensor:
    """Trainable gradients, flat (BERT's pooler gets none: embeddings come from the hidden states)."""
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])


@pytest.mark.parametrize("name", list(ARCHS))
def test_packed_equals_padded(name):
    arch, pooling = ARCHS[name]
    padded, packed = embedders(arch, pooling)
    tokens = all_tokens(pooling)
    assert len(set(tokens.lengths())) > 5  # really different lengths, so padding would matter
    rows = list(range(len(tokens)))
    random.Random(0).shuffle(rows)
    weight = torch.randn(len(rows), 64)

    e_pad = padded(**vars(tokens))[rows]
    e_pack = packed(**vars(tokens.pack(rows)))
    assert e_pack.shape == e_pad.shape
    assert (e_pack - e_pad).abs().max() <= 1e-5
    (e_pad * weight).sum().backward()
    (e_pack * weight).sum().backward()
    g_pad, g_pack = lora_grads(padded), lora_grads(packed)
    assert g_pad.norm() > 0
    assert (g_pack - g_pad).norm() / g_pad.norm() <= REL


def test_packed_backbone_refuses_padded_input():
    _, packed = embedders(*ARCHS["llama"])
    tokens = tokenize(tiny_tokenizer(), ["a b", "c"], 16, True)
    with pytest.raises(ValueError, match="loaded for packed inputs"):
        packed(**vars(tokens))


def test_token_budget_chunks_respect_budget_and_cover_every_sequence():
    rng = random.Random(1)
    lengths = [rng.randint(1, 256) for _ in range(500)] + [1500]  # one longer than the budget
    chunks = token_budget_chunks(lengths, 1024)
    flat = [i for c in chunks for i in c]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for c in chunks:
        assert sum(lengths[i] for i in c) <= 1024 or len(c) == 1
    assert [1500] in [[lengths[i] for i in c] for c in chunks]
    # greedy filling of sorted lengths: each chunk but the last is short by less than its next item
    for a, b in itertools.pairwise(chunks):
        assert sum(lengths[i] for i in a) + lengths[b[0]] > 1024


def test_blockwise_loss_equals_whole_batch():
    torch.manual_seed(0)
    n, group, dim = 12, 4, 16
    q = torch.nn.functional.normalize(torch.randn(n, dim), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(n * group, dim), dim=-1)
    allowed = torch.rand(n, n * group) > 0.2
    positive = torch.arange(n) * group
    allowed[torch.arange(n), positive] = True
    loss_fn = InfoNCE(0.05).by_rows(positive, allowed)

    qa, da = q.clone().requires_grad_(True), d.clone().requires_grad_(True)
    whole = loss_fn(qa, da, slice(None))
    whole.backward()
    loss, q_grad, d_grad = loss_and_grads(loss_fn, q, d, gather=False, block_logits=3 * n * group)
    assert abs(float(loss) - float(whole.detach())) <= REL * float(whole.detach())
    for mine, ref in ((q_grad, qa.grad), (d_grad, da.grad)):
        assert (mine - ref).norm() <= REL * ref.norm()


def test_config_checks_packing_fields():
    assert not load_config(TINY).gradcache.packing  # off unless asked for
    with pytest.raises(ConfigError) as e:
        load_config(TINY, ["gradcache.packing=true", "gradcache.chunk_tokens=32", "gradcache.enabled=false"])
    assert "'gradcache.chunk_tokens' (32) must be >= the longest sequence (64" in str(e.value)
    assert "'gradcache.packing' needs gradcache.enabled=true" in str(e.value)


@pytest.mark.integration
def test_gradcache_with_packing_equals_plain_padded(tmp_path):
    """Two ranks, tiny config: packed token-budget GradCache (replay checked) == no GradCache, padded."""
    steps = "optim.max_steps=3"
    packed = torchrun_worker(
        2,
        tmp_path / "packed.pt",
        steps,
        "gradcache.packing=true",
        "gradcache.chunk_tokens=64",
        "gradcache.check_replay=true",
        f"run.output_dir={tmp_path / 'packed'}",
    )
    plain = torchrun_worker(
        2, tmp_path / "plain.pt", steps, "gradcache.enabled=false", f"run.output_dir={tmp_path / 'plain'}"
    )
    for step in (1, 2, 3):
        assert set(packed[step]) == set(plain[step])
        assert rel_diff(plain[step], packed[step]) <= REL, (
            f"step {step}: {rel_diff(plain[step], packed[step]):.2e}"
        )


# ----------------------------------------------------------------------------- GPU kernels

# Keyword parameters of torch.nn.attention.varlen.varlen_attn as released (read from the wheels).
VARLEN_SIGNATURES = {
    "2.10": {"is_causal", "return_aux"},
    "2.11": {"return_aux", "scale", "window_size"},
    "2.12": {"return_aux", "scale", "window_size", "enable_gqa", "seqused_k", "block_table", "num_splits"},
}


@pytest.mark.parametrize("release", list(VARLEN_SIGNATURES))
def test_torch_varlen_call_fits_each_release(release, monkeypatch):
    from sfr_ds import packed_attention

    params = VARLEN_SIGNATURES[release]
    monkeypatch.setattr(packed_attention, "_torch_varlen_params", lambda: frozenset(params))
    causal = lambda kw: kw.get("is_causal", kw.get("window_size") == (-1, 0))
    kwargs, expand = packed_attention._torch_varlen_kwargs(
        causal=True, scale=128**-0.5, gqa=True, head_dim=128
    )
    assert set(kwargs) <= params and causal(kwargs) is True
    assert kwargs.get("scale", 128**-0.5) == 128**-0.5  # the default scale may go unsaid
    # a kernel without grouped-query attention gets K/V repeated to the query's heads
    assert expand == ("enable_gqa" not in params)
    kwargs, expand = packed_attention._torch_varlen_kwargs(causal=False, scale=None, gqa=False, head_dim=128)
    assert not expand and causal(kwargs) is False
    # a scale the kernel cannot take sends the call elsewhere rather than being dropped
    other = packed_attention._torch_varlen_kwargs(causal=True, scale=0.5, gqa=False, head_dim=128)
    assert (other is None) == ("scale" not in params)


def test_repeated_kv_heads_equal_grouped_query_attention():
    from sfr_ds.packed_attention import repeat_kv_heads

    torch.manual_seed(0)
    q, k, v = torch.randn(10, 8, 16), torch.randn(10, 2, 16), torch.randn(10, 2, 16)  # [T, heads, D]
    as_sdpa = lambda x: x.transpose(0, 1)[None]
    grouped = torch.nn.functional.scaled_dot_product_attention(
        as_sdpa(q), as_sdpa(k), as_sdpa(v), is_causal=True, enable_gqa=True
    )
    repeated = torch.nn.functional.scaled_dot_product_attention(
        as_sdpa(q), as_sdpa(repeat_kv_heads(k, 8)), as_sdpa(repeat_kv_heads(v, 8)), is_causal=True
    )
    assert (grouped - repeated).abs().max() <= 1e-6


def bf16_errors(device: str, name: str = "mistral") -> tuple[float, float, float, float]:
    """Max |embedding - fp32 padded| and relative LoRA-gradient error, packed and padded, in bf16."""
    arch, pooling = ARCHS[name]
    arch = dict(arch, hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2)
    padded, packed = embedders(arch, pooling)
    tokens = all_tokens(pooling)
    weight = torch.randn(len(tokens), 256, device=device)
    results = {}
    for kind, model, batch in (
        ("ref", padded, tokens),
        ("padded", padded, tokens),
        ("packed", packed, tokens.pack(list(range(len(tokens))))),
    ):
        model = model.to(device, torch.float32 if kind == "ref" else torch.bfloat16)
        model.zero_grad()
        emb = model(**vars(batch.to(device)))
        (emb * weight).sum().backward()
        results[kind] = emb.detach().float(), lora_grads(model).float()
    (e_ref, g_ref) = results["ref"]
    emb_err = {k: float((results[k][0] - e_ref).abs().max()) for k in ("padded", "packed")}
    grad_err = {k: float((results[k][1] - g_ref).norm() / g_ref.norm()) for k in ("padded", "packed")}
    return emb_err["padded"], emb_err["packed"], grad_err["padded"], grad_err["packed"]


@pytest.mark.parametrize("device", DEVICES)
def test_packed_bf16_is_as_accurate_as_padded_bf16(device, monkeypatch):
    """In bf16 neither layout is exact; packed must be no further from fp32 than padded is. On a GPU
    the packed path must use a variable-length kernel (flash-attn's or PyTorch's), not the grid."""
    from sfr_ds import packed_attention

    if device == "cuda":
        plan = packed_attention._torch_varlen_kwargs(True, None, True, 64)
        assert packed_attention._flash_attn_varlen() is not None or plan is not None, (
            f"torch {torch.__version__} has no varlen kernel sfr-ds can call"
        )

        def no_grid(*args, **kwargs):
            raise AssertionError("packed attention fell back to the padded grid on a GPU")

        monkeypatch.setattr(packed_attention, "_padded_attention", no_grid)
    torch.manual_seed(0)
    pad_emb, pack_emb, pad_grad, pack_grad = bf16_errors(device)
    assert pad_emb > 0 and pad_grad > 0  # bf16 really differs from fp32
    assert pack_emb <= 2 * pad_emb + 1e-3, (pack_emb, pad_emb)
    assert pack_grad <= 2 * pad_grad + 1e-2, (pack_grad, pad_grad)


# ----------------------------------------------------------------------------- host synchronisation


class PlainEngine:
    """What gradcache_step needs of a DeepSpeed engine, with nothing of DeepSpeed's own."""

    def __init__(self, module, device: str = "cpu"):
        self.module, self.device = module, torch.device(device)

    def __call__(self, **batch):
        return self.module(**batch)

    def backward(self, loss):
        loss.backward()

    def set_gradient_accumulation_boundary(self, last: bool):
        pass


def host_reads_of_a_step(name: str, packing: bool) -> set[tuple[str, str]]:
    arch, pooling = ARCHS[name]
    padded, packed = embedders(arch, pooling)
    queries, docs, loss_fn = small_step(pooling)

    def gate(loss):
        return math.isfinite(float(loss))

    reads = HostReads()
    with reads:
        gradcache_step(
            PlainEngine(packed if packing else padded),
            queries,
            docs,
            loss_fn,
            chunks=ChunkPolicy(4, 128 if packing else None),
            gather=False,
            gate=gate,
        )
    return reads.functions()


@pytest.mark.parametrize("name", ["mistral", "bert"])
def test_packed_step_reads_no_device_value_but_the_gate(name):
    """Packed GradCache (forward, blockwise loss, chunked backward) reads nothing back from the
    device except through the gate, the step's one planned synchronisation; packing itself reads
    only the host's token tensors."""
    where = host_reads_of_a_step(name, packing=True)
    allowed = {("test_packing.py", "gate"), ("tokens.py", "pack")}
    assert ("test_packing.py", "gate") in where  # the probe sees the gate's read
    assert where <= allowed, f"host reads outside the gate: {sorted(where - allowed)}"


def test_padded_step_reads_the_mask_in_every_forward():
    """The control: the probe sees reads inside a model's forward. Padded, transformers checks
    whether the mask can be skipped (``padding_mask.all()``), a synchronisation per chunk on a GPU
    that packed inputs, which carry no mask, do not have."""
    assert ("masking_utils.py", "_ignore_causal_mask_sdpa") in host_reads_of_a_step("mistral", packing=False)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcache_replay_reproduces_the_cache_pass_with_dropout(device):
    """With LoRA dropout on, GradCache's gradients must be those of the loss the cache pass saw:
    every chunk re-embedded under the dropout masks of its cache-pass forward (the saved RNG
    state) and, on a GPU in bf16, by a deterministic varlen kernel. The reference is built without
    GradCache: the same chunks, forwarded with grad in the same order from the same RNG state, the
    same loss, one backward. Without the RNG replay the masks differ and so do the gradients."""
    arch, pooling = ARCHS["mistral"]
    cfg = ModelConfig(name_or_path="tiny", random_init=arch, pooling=pooling, dtype="fp32")
    torch.manual_seed(0)
    model = with_lora_b(build_embedder(cfg, LoraConfig(dropout=0.1), packed=True)).to(
        device, torch.bfloat16 if device == "cuda" else torch.float32
    )
    queries, docs, loss_fn = small_step(pooling, device)
    chunks = ChunkPolicy(4, 128)
    q_chunks, d_chunks = chunks.plan(queries, docs)

    torch.manual_seed(1)
    embs = [model(**vars(c.batch.to(device))) for c in q_chunks + d_chunks]
    q, d = _in_batch_order(embs[: len(q_chunks)], q_chunks), _in_batch_order(embs[len(q_chunks) :], d_chunks)
    reference = loss_fn(q, d, slice(None))
    reference.backward()
    expected = lora_grads(model).clone()
    model.zero_grad()

    torch.manual_seed(1)
    loss = gradcache_step(PlainEngine(model, device), queries, docs, loss_fn, chunks=chunks, gather=False)
    tol = 2e-2 if device == "cuda" else 1e-5  # bf16 on the GPU
    assert float(loss) == pytest.approx(float(reference.detach()), rel=tol)
    assert expected.abs().sum() > 0 and rel_diff(expected, lora_grads(model)) <= tol
    # the control: other dropout masks give other gradients, by far more than the tolerance
    model.zero_grad()
    torch.manual_seed(2)
    loss_fn(
        *(
            _in_batch_order([model(**vars(c.batch.to(device))) for c in cs], cs)
            for cs in (q_chunks, d_chunks)
        ),
        slice(None),
    ).backward()
    assert rel_diff(expected, lora_grads(model)) > 10 * tol
