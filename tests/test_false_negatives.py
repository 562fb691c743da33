"""The in-loss false-negative mask (loss.false_negative_margin) and same-document masking.

Unit tests check the mask against a loop over rows that scores each query against only the
candidates it keeps. The two-rank tests run real gloo processes through ``forward_backward`` (a
tiny random Mistral, plain and GradCache), compare with one process over the same global batch,
and show their own power: a mask applied on rank 0 only, or only to the loss value (not to the
gradient GradCache back-propagates), gives other gradients by far more than the tolerance.
"""

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import TINY, free_port, join_gloo, rel_diff

from sfr_ds.config import ConfigError, load_config
from sfr_ds.data.batch import NegativeDrawer, allowed_mask, build_text_batch
from sfr_ds.data.records import Record
from sfr_ds.loss import InfoNCE

REL = 1e-5
MARGIN = 0.02  # masks a few candidates of the tiny random model's (similar) embeddings


def reference(q, docs, positive, allowed, t, margin, dims=()):
    """(loss, masked count) one row at a time: softmax over the kept candidates only. The mask is
    decided on full-width scores; each prefix cut and renormalised by hand."""
    q, docs = q.double(), docs.double()
    keep, masked = [], 0
    for i in range(len(q)):
        pos = int(positive[i])
        s = [float(q[i] @ docs[j]) for j in range(len(docs))]
        row = [
            j
            for j in range(len(docs))
            if allowed[i, j] and (j == pos or margin is None or s[j] <= s[pos] + margin)
        ]
        masked += sum(1 for j in range(len(docs)) if allowed[i, j]) - len(row)
        keep.append(row)
    total = 0.0
    for d, w in dims or [(q.shape[1], 1.0)]:
        qd, dd = F.normalize(q[:, :d], dim=-1), F.normalize(docs[:, :d], dim=-1)
        for i, row in enumerate(keep):
            logits = torch.stack([qd[i] @ dd[j] for j in row]) / t
            total += w * float(torch.logsumexp(logits, 0) - logits[row.index(int(positive[i]))]) / len(q)
    return total, masked


def case(seed=0, n=6, m=15, d=16):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    docs = F.normalize(torch.randn(m, d, generator=g), dim=-1)
    positive = torch.arange(n) * 2
    allowed = torch.rand(n, m, generator=g) > 0.2
    allowed[torch.arange(n), positive] = True
    return q, docs, positive, allowed


def test_mask_matches_a_loop_that_drops_the_candidates():
    q, docs, positive, allowed = case()
    loss = InfoNCE(0.05, false_negative_margin=0.1)
    want, n_masked = reference(q, docs, positive, allowed, 0.05, 0.1)
    assert 0 < n_masked < int(allowed.sum()) - len(q)  # it masks some, not all
    assert float(loss(q, docs, positive, allowed)) == pytest.approx(want, rel=1e-6)
    assert int(loss.take_masked()) == n_masked and int(loss.take_masked()) == 0
    assert float(InfoNCE(0.05)(q, docs, positive, allowed)) != pytest.approx(want, rel=1e-3)


def test_mask_only_removes_allowed_non_positive_candidates_and_carries_no_gradient():
    q, docs, positive, allowed = case(seed=1)
    loss = InfoNCE(0.05, false_negative_margin=0.0)
    over = loss.false_negatives(q, docs, positive, allowed)
    assert over.any() and not (over & ~allowed).any()
    assert not over[torch.arange(len(q)), positive].any()
    qg = q.clone().requires_grad_(True)
    assert not loss.false_negatives(qg, docs, positive, allowed).requires_grad
    # the gradient is that of the loss over the kept candidates, the mask a constant
    value = loss(qg, docs, positive, allowed)
    (g_mask,) = torch.autograd.grad(value, qg)
    qg2 = q.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(InfoNCE(0.05)(qg2, docs, positive, allowed & ~over), qg2)
    torch.testing.assert_close(g_mask, g_ref, rtol=0, atol=0)


def test_mask_off_or_never_triggered_is_todays_loss_bit_for_bit():
    q, docs, positive, allowed = case(seed=2)
    base = InfoNCE(0.05)(q, docs, positive, allowed)
    assert torch.equal(InfoNCE(0.05, false_negative_margin=None)(q, docs, positive, allowed), base)
    wide = InfoNCE(0.05, false_negative_margin=10.0)
    assert torch.equal(wide(q, docs, positive, allowed), base) and int(wide.take_masked()) == 0


def test_matryoshka_applies_the_full_width_mask_at_every_width():
    q, docs, positive, allowed = case(seed=3)
    dims = [(16, 1.0), (8, 0.5), (4, 0.25)]
    loss = InfoNCE(0.05, dims=[d for d, _ in dims], weights=[w for _, w in dims], false_negative_margin=0.05)
    want, n_masked = reference(q, docs, positive, allowed, 0.05, 0.05, dims)
    assert n_masked > 0
    assert float(loss(q, docs, positive, allowed)) == pytest.approx(want, rel=1e-6)
    assert int(loss.take_masked()) == n_masked  # counted once, not once per width


def test_row_blocks_add_up_loss_and_count():
    """GradCache's loss stage runs blocks of query rows: the shares and the counts add up."""
    q, docs, positive, allowed = case(seed=4)
    loss = InfoNCE(0.05, false_negative_margin=0.05)
    whole, n_whole = float(loss(q, docs, positive, allowed)), int(loss.take_masked())
    blocks = loss.by_rows(positive, allowed)
    total = sum(float(blocks(q[r], docs, r)) for r in (slice(0, 2), slice(2, 6)))
    assert total == pytest.approx(whole, rel=1e-6) and int(loss.take_masked()) == n_whole > 0


def test_own_negatives_rows_mask_within_their_own_documents():
    """Labels-as-documents: the mask can only remove a query's own label documents."""
    recs = [
        Record(
            f"text {i}",
            [f"label {i % 3}"],
            [f"label {(i + 1) % 3}", f"label {(i + 2) % 3}"],
            "classification",
            "c",
            "",
        )
        for i in range(4)
    ]
    batch = build_text_batch(recs, np.arange(4), 0, NegativeDrawer(recs, 2, "repeat", 0))
    allowed = allowed_mask(batch, slice(0, 4), True)
    g = torch.Generator().manual_seed(5)
    q, docs = (
        F.normalize(torch.randn(4, 8, generator=g), dim=-1),
        F.normalize(torch.randn(12, 8, generator=g), dim=-1),
    )
    positive = torch.arange(4) * 3
    loss = InfoNCE(0.05, false_negative_margin=0.0)
    over = loss.false_negatives(q, docs, positive, allowed)
    assert over.any() and not (over & ~allowed).any()
    want, n = reference(q, docs, positive, allowed, 0.05, 0.0)
    assert float(loss(q, docs, positive, allowed)) == pytest.approx(want, rel=1e-6) and n == int(over.sum())


def test_documents_with_one_id_are_the_same_document():
    """Two texts of one document (by the records' pos_ids/neg_ids) never act as each other's negative."""
    recs = [
        Record("q0", ["Doc A"], ["n0"], "retrieval", "d", "", {"pos_ids": ["A"], "neg_ids": ["N0"]}),
        Record("q1", ["p1"], ["Title. Doc A"], "retrieval", "d", "", {"pos_ids": ["P1"], "neg_ids": ["A"]}),
        Record("q2", ["p2"], ["n2"], "retrieval", "d", ""),
    ]
    batch = build_text_batch(recs, np.arange(3), 0, NegativeDrawer(recs, 1, "repeat", 0))
    assert batch.doc_ids == ["A", "N0", "P1", "A", None, None]
    with_ids = allowed_mask(batch, slice(0, 3), True).numpy()
    assert not with_ids[0, 3] and with_ids[1, 3] and with_ids[2, 3]  # hidden from q0 only
    batch.doc_ids = None  # by text alone the titled copy stays a negative of q0
    assert allowed_mask(batch, slice(0, 3), True).numpy()[0, 3]


def test_config_reports_a_bad_margin_with_the_other_problems():
    with pytest.raises(ConfigError) as e:
        load_config(TINY, ["loss.false_negative_margin=-0.1", "loss.temperature=0"])
    message = str(e.value)
    assert "'loss.false_negative_margin' must be a number >= 0" in message and "loss.temperature" in message
    with pytest.raises(ConfigError, match="'loss.false_negative_margin' must be float or null"):
        load_config(TINY, ["loss.false_negative_margin=lots"])
    assert load_config(TINY).loss.false_negative_margin is None  # off by default
    assert load_config(TINY, ["loss.false_negative_margin=1e-1"]).loss.false_negative_margin == 0.1


# ----------------------------------------------------------------------------- two ranks, gloo

# Four examples, two per rank. r2 (rank 1) has r0's positive as its own positive; r3 (rank 1) has
# as a negative another text of r0's positive (same id "A"): both duplicates sit on the other rank.
A_TITLED = "Receptor paper. the receptor binds protein X"
RECORDS = [
    Record("which protein binds the receptor", ["the receptor binds protein X"], ["cells divide", "a gene"],
           "retrieval", "d", "Retrieve", {"pos_ids": ["A"]}),
    Record("when do leaves fall", ["leaves fall in autumn"], ["trees are tall", "winter is cold"],
           "retrieval", "d", "Retrieve"),
    Record("what does the receptor bind", ["the receptor binds protein X"], ["rivers flow", "salt is white"],
           "retrieval", "d", "Retrieve"),
    Record("how fast is light", ["light travels fast"], [A_TITLED, "sound waves"],
           "retrieval", "d", "Retrieve", {"neg_ids": ["A", "S"]}),
]  # fmt: skip
WORLD = 2


class Engine:
    """What forward_backward needs of a DeepSpeed engine, and nothing of DeepSpeed."""

    def __init__(self, module):
        self.module, self.device = module, torch.device("cpu")

    def __call__(self, **batch):
        return self.module(**batch)

    def backward(self, loss):
        loss.backward()

    def set_gradient_accumulation_boundary(self, last):
        pass


class Rank0Only(InfoNCE):
    """Mutation: the mask applied on rank 0 only."""

    def false_negatives(self, q, docs, positive, allowed):
        from sfr_ds import dist

        over = super().false_negatives(q, docs, positive, allowed)
        return over if dist.info().rank == 0 else torch.zeros_like(over)


class ValueOnly(InfoNCE):
    """Mutation: the cache pass's loss is masked, the gradient back-propagated is of the unmasked loss."""

    def __call__(self, q, docs, positive, allowed):
        masked = super().__call__(q, docs, positive, allowed)
        plain = InfoNCE(self.temperature, self.dims, self.weights, self.normalize)(q, docs, positive, allowed)
        return masked.detach() + plain - plain.detach()


def config(margin=MARGIN, mask_duplicates=True):
    return load_config(
        TINY,
        [
            "data.global_batch_size=4",
            "data.hard_negatives=2",
            f"loss.false_negative_margin={'null' if margin is None else margin}",
            f"loss.mask_duplicates={str(mask_duplicates).lower()}",
        ],
    )


def tiny_model():
    """(tiny model, tokenizer, the global batch of RECORDS): the same in every process."""
    from sfr_ds.model import build_embedder, load_tokenizer

    cfg = config()
    torch.manual_seed(0)
    model = build_embedder(cfg.model, cfg.lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would leave A without gradient
            p.data.normal_(0, 0.05)
    batch = build_text_batch(RECORDS, np.arange(4), 0, NegativeDrawer(RECORDS, 2, "repeat", 0))
    return model, load_tokenizer(cfg.model), batch


def step(cfg, model, tokenizer, batch, rows, chunk_size, loss_cls=InfoNCE):
    """(local loss, local gradients, masked count) of one step on this rank's ``rows``."""
    from sfr_ds.data.step_inputs import step_inputs
    from sfr_ds.forward_backward import ChunkPolicy, forward_backward

    inputs = step_inputs(batch, rows, tokenizer, cfg)
    loss = loss_cls.from_config(cfg.loss, cfg.model.normalize)
    model.zero_grad()
    chunks = None if chunk_size is None else ChunkPolicy(chunk_size)
    value = forward_backward(
        Engine(model), inputs, loss.by_rows(inputs.positive, inputs.allowed), chunks=chunks
    )
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return value.detach(), grads, loss.take_masked()


VARIANTS = {  # name: (chunk size or None for plain, loss class, margin, mask_duplicates)
    "plain": (None, InfoNCE, MARGIN, True),
    "gradcache": (1, InfoNCE, MARGIN, True),
    "rank0_only": (1, Rank0Only, MARGIN, True),
    "value_only": (1, ValueOnly, MARGIN, True),
    "duplicates": (None, InfoNCE, None, True),
}


def _worker(rank, port, out):
    from sfr_ds import dist

    torch.set_num_threads(1)  # two ranks on two cores: more threads oversubscribe them many times over
    join_gloo(rank, WORLD, port, timeout_s=90)
    results, (model, tok, batch) = {}, tiny_model()
    for name, (chunk, cls, margin, dup) in VARIANTS.items():
        cfg = config(margin, dup)
        value, grads, count = step(cfg, model, tok, batch, slice(2 * rank, 2 * rank + 2), chunk, cls)
        # DeepSpeed averages the ranks' gradients; the loss and counts are summed. numpy: a tensor
        # in the queue would be shared memory that dies with this process
        grads = {n: (dist.all_reduce_sum(g) / WORLD).numpy() for n, g in grads.items()}
        results[name] = dict(loss=float(dist.all_reduce_sum(value)) / WORLD, local_loss=float(value),
                             grads=grads, masked=int(dist.all_reduce_sum(count)))  # fmt: skip
    if rank == 0:
        out.put(results)
    dist.cleanup()


@pytest.fixture(scope="module")
def two_ranks():
    port, ctx = free_port(), mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        got = out.get(timeout=240)
    finally:
        for p in procs:
            p.join(60)
    for r in got.values():
        r["grads"] = {n: torch.from_numpy(g) for n, g in r["grads"].items()}
    return got


@pytest.fixture(scope="module")
def one_rank():
    """The same global batch in this one process (no process group: the gather is the identity)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads cost more than they give on a busy machine
    try:
        out, (model, tok, batch) = {}, tiny_model()
        for name in ("plain", "gradcache"):
            chunk, cls, margin, dup = VARIANTS[name]
            value, grads, count = step(config(margin, dup), model, tok, batch, slice(0, 4), chunk, cls)
            out[name] = dict(loss=float(value), grads=grads, masked=int(count))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.integration
def test_masked_gradients_equal_across_ranks_and_under_gradcache(two_ranks, one_rank):
    ref = one_rank["plain"]
    assert ref["masked"] > 0, "the mask must remove something for this test to mean anything"
    assert sum(float(g.abs().sum()) for g in ref["grads"].values()) > 1e-3
    runs = {
        "1 rank GradCache": one_rank["gradcache"],
        **{f"2 ranks {k}": two_ranks[k] for k in ("plain", "gradcache")},
    }
    for name, got in runs.items():
        assert got["masked"] == ref["masked"], name
        assert got["loss"] == pytest.approx(ref["loss"], rel=REL), name
        assert rel_diff(ref["grads"], got["grads"]) <= REL, (
            f"{name}: {rel_diff(ref['grads'], got['grads']):.2e}"
        )


@pytest.mark.integration
def test_mask_on_one_rank_or_only_in_the_loss_value_is_caught(two_ranks, one_rank):
    """The comparison above has the power to see a mask applied unevenly."""
    ref = one_rank["plain"]["grads"]
    for name in ("rank0_only", "value_only"):
        diff = rel_diff(ref, two_ranks[name]["grads"])
        print(f"{name}: relative gradient difference {diff:.2e}")
        assert diff > 100 * REL, f"{name}: {diff:.2e}"
    assert two_ranks["rank0_only"]["masked"] < one_rank["plain"]["masked"]
    # value_only's loss is the masked one: only its gradient is wrong
    assert two_ranks["value_only"]["loss"] == pytest.approx(one_rank["plain"]["loss"], rel=REL)


@pytest.mark.integration
def test_duplicate_of_the_positive_on_the_other_rank_is_masked(two_ranks):
    """Rank 0's loss equals a hand-written loss without the two copies of query 0's positive that
    rank 1 holds (same text; same id, other text), from embeddings made here in one process."""
    cfg, (model, tok, batch) = config(None), tiny_model()
    texts = batch.docs
    dup_text, dup_id = 6, texts.index(A_TITLED)
    assert texts[dup_text] == texts[0] and dup_id >= 9  # both on rank 1 (documents 6..11)
    assert allowed_mask(batch, slice(0, 2), True).numpy().sum(1).tolist() == [10, 12]
    from sfr_ds.data.step_inputs import step_inputs

    inputs = step_inputs(batch, slice(0, 4), tok, cfg)
    with torch.no_grad():
        q, d = model(**vars(inputs.queries)).double(), model(**vars(inputs.docs)).double()
    t, total = cfg.loss.temperature, 0.0
    for i, excluded in ((0, {dup_text, dup_id}), (1, set())):
        keep = [j for j in range(12) if j not in excluded]
        s = [float(q[i] @ d[j]) / t for j in keep]
        m = max(s)
        total += m + math.log(sum(math.exp(v - m) for v in s)) - s[keep.index(3 * i)]
    got = two_ranks["duplicates"]["local_loss"]
    assert math.isfinite(got) and got == pytest.approx(total / 2, rel=REL)


@pytest.mark.slow  # three DeepSpeed runs under torchrun (about a minute and a half here)
def test_training_with_the_mask_is_exact_and_logs_its_count(tmp_path):
    """The training loop end to end (DeepSpeed ZeRO-2, tiny config, steps of both loss modes): 1 vs
    2 ranks and GradCache vs plain with the mask on, and metrics.jsonl's count summed over ranks."""
    from conftest import read_metrics, torchrun_worker

    on = ("optim.max_steps=3", f"loss.false_negative_margin={MARGIN}")
    runs = {
        name: torchrun_worker(n, tmp_path / f"{name}.pt", *on, *extra, f"run.output_dir={tmp_path / name}")
        for name, n, extra in [("w1", 1, ()), ("w2", 2, ()), ("w2_plain", 2, ("gradcache.enabled=false",))]
    }
    for step in (1, 2, 3):
        for name in ("w2", "w2_plain"):
            diff = rel_diff(runs["w1"][step], runs[name][step])
            assert diff <= REL, f"step {step} {name}: {diff:.2e}"
    counts = {name: [m["false_negatives_masked"] for m in read_metrics(tmp_path / name)] for name in runs}
    assert counts["w1"] == counts["w2"] == counts["w2_plain"] and sum(counts["w1"]) > 0, counts
