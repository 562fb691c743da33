"""sfr-ds and sentence-transformers' CachedMultipleNegativesRankingLoss compute the same thing.

The same tiny model with the same LoRA (one PEFT module, shared by both), the same tokens (queries
formatted with their instruction, EOS appended: sentence-transformers reads the tokenizer that
``sfr-ds merge`` writes), the same batch of queries, positives and hard negatives, temperature 0.02
= scale 50: sfr-ds's InfoNCE over every positive and negative of the batch and
sentence-transformers' cached loss (mini-batches of 2) give the same loss and the same LoRA
gradients, on 1 rank and on 2 gloo ranks (sfr-ds's gather with gradients; sentence-transformers'
``gather_across_devices``; gradients averaged over ranks as DDP and DeepSpeed do). This keeps the
side-by-side benchmark honest as both libraries move.
"""

import functools
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import TINY, free_port, join_gloo, rel_diff

pytestmark = pytest.mark.integration

N = 6  # queries, each with one positive and one hard negative
QUERIES = [f"Instruct: find it\nQuery: question number {i} about topic {i * 7}" for i in range(N)]
POSITIVES = [f"the answer to question {i} is a document about topic {i * 7}" for i in range(N)]
NEGATIVES = [f"an unrelated passage {i} on subject {i * 3} and more words" for i in range(N)]
MAX_LEN, SCALE = 64, 50.0


def tiny_folders(root: Path) -> tuple[Path, Path]:
    """(a random tiny Mistral with the tiny tokenizer, the tokenizer as sfr-ds merge writes it)."""
    from transformers import AutoConfig, AutoModel

    from sfr_ds.config import ModelConfig
    from sfr_ds.merge.layout import write_tokenizer
    from sfr_ds.model import load_tokenizer

    arch = dict(yaml.safe_load(TINY.read_text())["model"]["random_init"])
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch)).save_pretrained(root / "base")
    load_tokenizer(ModelConfig(name_or_path="builtin:tiny-tokenizer")).save_pretrained(root / "base")
    write_tokenizer(root / "base", root / "tokenizer", {"append_eos": True, "doc_max_len": MAX_LEN})
    return root / "base", root / "tokenizer"


def models(base: Path, tokenizer: Path):
    """(sfr-ds Embedder, SentenceTransformer) over one LoRA'd backbone with random non-zero LoRA."""
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import AutoModel

    from sfr_ds.model import Embedder

    torch.manual_seed(1)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    backbone = get_peft_model(AutoModel.from_pretrained(base, dtype=torch.float32), lora)
    transformer = modules.Transformer(
        str(base),
        max_seq_length=MAX_LEN,
        tokenizer_name_or_path=str(tokenizer),
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
    )
    transformer.model = backbone  # the very same weights and LoRA on both sides
    width = backbone.config.hidden_size
    st = SentenceTransformer(
        modules=[transformer, modules.Pooling(width, pooling_mode="lasttoken"), modules.Normalize()],
        device="cpu",
    )
    return Embedder(backbone, "last", True), st, backbone


def lora_grads(backbone) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}


def sfr_ds_step(embedder, backbone, rows: slice, gather=None) -> tuple[float, dict]:
    """sfr-ds's InfoNCE for the queries ``rows`` over every (gathered) positive and negative."""
    from sfr_ds.loss import InfoNCE

    def embed(texts):
        t = tokens(texts)
        return embedder(t.input_ids, t.attention_mask)

    backbone.zero_grad()
    q = embed(QUERIES[rows])
    docs = embed([x for pair in zip(POSITIVES[rows], NEGATIVES[rows]) for x in pair])
    offset = 0
    if gather is not None:
        offset = gather.rank * docs.size(0)
        docs = gather.gather(docs)
    positive = offset + 2 * torch.arange(q.size(0))
    loss = InfoNCE(1 / SCALE)(q, docs, positive, torch.ones(q.size(0), docs.size(0), dtype=torch.bool))
    loss.backward()
    return float(loss.detach()), lora_grads(backbone)


@functools.cache
def tokenizer():
    from sfr_ds.config import ModelConfig
    from sfr_ds.model import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="builtin:tiny-tokenizer"))


def tokens(texts: list[str]):
    """sfr-ds's tokens: truncated to MAX_LEN with EOS appended, right-padded."""
    from sfr_ds.data.tokens import tokenize

    return tokenize(tokenizer(), texts, MAX_LEN, True)


def st_step(st, backbone, rows: slice, gather: bool = False) -> tuple[float, dict]:
    """sentence-transformers' cached loss on the same queries, positives and negatives."""
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    backbone.zero_grad()
    loss_fn = CachedMultipleNegativesRankingLoss(
        st, scale=SCALE, mini_batch_size=2, gather_across_devices=gather
    )
    features = [st.preprocess(texts[rows]) for texts in (QUERIES, POSITIVES, NEGATIVES)]
    loss = loss_fn(features, None)
    loss.backward()
    return float(loss.detach()), lora_grads(backbone)


def test_same_tokens_loss_and_lora_gradients_on_one_rank(tmp_path):
    embedder, st, backbone = models(*tiny_folders(tmp_path))
    for texts in (QUERIES, POSITIVES):  # the same tokens, EOS included
        assert torch.equal(st.preprocess(texts)["input_ids"], tokens(texts).input_ids)
    loss_a, grads_a = sfr_ds_step(embedder, backbone, slice(0, N))
    loss_b, grads_b = st_step(st, backbone, slice(0, N))
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert rel_diff(grads_a, grads_b) <= 1e-5
    assert sum(float(g.abs().sum()) for g in grads_a.values()) > 1e-3  # real gradients


class _Gather:
    def __init__(self, rank: int):
        from sfr_ds import dist

        self.rank, self.gather = rank, dist.gather_with_grad


def _two_rank_worker(rank: int, world: int, port: int, root: str, out) -> None:
    from sfr_ds import dist

    join_gloo(rank, world, port)
    embedder, st, backbone = models(Path(root) / "base", Path(root) / "tokenizer")
    rows = slice(rank * N // world, (rank + 1) * N // world)
    results = {}
    for name, step in (
        ("sfr-ds", lambda: sfr_ds_step(embedder, backbone, rows, _Gather(rank))),
        ("st", lambda: st_step(st, backbone, rows, gather=True)),
    ):
        loss, grads = step()
        averaged = {k: dist.all_reduce_sum(g) / world for k, g in grads.items()}  # as DDP and DeepSpeed do
        results[name] = (dist.all_reduce_sum(torch.tensor(loss)).item() / world, averaged)
    if rank == 0:
        out.put({k: (loss, {n: g.numpy() for n, g in grads.items()}) for k, (loss, grads) in results.items()})
    dist.cleanup()


def test_same_loss_and_lora_gradients_on_two_ranks_as_on_one(tmp_path):
    embedder, _, backbone = models(*tiny_folders(tmp_path))
    loss_1, grads_1 = sfr_ds_step(embedder, backbone, slice(0, N))
    ctx, port = mp.get_context("spawn"), free_port()
    out = ctx.Queue()
    procs = [ctx.Process(target=_two_rank_worker, args=(r, 2, port, str(tmp_path), out)) for r in range(2)]
    for p in procs:
        p.start()
    got = out.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for name in ("sfr-ds", "st"):
        loss, grads = got[name]
        assert loss == pytest.approx(loss_1, rel=1e-5), name
        assert rel_diff(grads_1, {k: torch.from_numpy(v) for k, v in grads.items()}) <= 1e-5, name
