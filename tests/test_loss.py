"""Loss modes and masks, checked on the logits and against a loop-based InfoNCE."""

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import free_port, join_gloo

from sfr_ds.data.batch import NegativeDrawer, allowed_mask, build_text_batch
from sfr_ds.data.records import Record
from sfr_ds.loss import InfoNCE


def rec(q, pos, neg, task="retrieval", ds="d"):
    return Record(q, [pos], list(neg), task, ds, "")


def reference_loss(q, docs, positive, allowed, t):
    """InfoNCE written out one query at a time."""
    total = 0.0
    for i in range(q.shape[0]):
        cand = [j for j in range(docs.shape[0]) if allowed[i, j]]
        s = {j: float(q[i] @ docs[j]) / t for j in cand}
        m = max(s.values())
        lse = m + math.log(sum(math.exp(v - m) for v in s.values()))
        total += lse - s[int(positive[i])]
    return total / q.shape[0]


def test_own_negatives_scores_only_own_documents():
    k = 2
    records = [
        rec(
            f"text {i}",
            f"label {i % 3}",
            [f"label {(i + 1) % 3}", f"label {(i + 2) % 3}"],
            task="classification",
        )
        for i in range(6)
    ]
    batch = build_text_batch(records, np.arange(6), 0, NegativeDrawer(records, k, "repeat", 0))
    assert not batch.needs_gather()
    allowed = allowed_mask(batch, slice(0, 6), mask_duplicates=True)
    q, docs = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(18, 8), dim=-1)
    logits = InfoNCE(0.02).logits(q, docs, allowed)
    for i in range(6):
        own = set(range(3 * i, 3 * i + 3))
        finite = {j for j in range(18) if torch.isfinite(logits[i, j])}
        assert finite == own  # the same label text elsewhere in the batch is never scored
    # moving every other example's documents leaves a query's logits unchanged
    docs2 = docs.clone()
    docs2[3:] = F.normalize(torch.randn(15, 8), dim=-1)
    torch.testing.assert_close(InfoNCE(0.02).logits(q, docs2, allowed)[0, :3], logits[0, :3])


def test_in_batch_loss_matches_reference_and_masks_duplicates():
    records = [
        rec("q0", "shared doc", ["n0"]),
        rec("q1", "shared doc", ["n1"]),
        rec("q2", "p2", ["q2"]),
        rec("q0", "p3", ["n3"]),
    ]
    batch = build_text_batch(records, np.arange(4), 0, NegativeDrawer(records, 1, "repeat", 0))
    assert batch.needs_gather()
    allowed = allowed_mask(batch, slice(0, 4), mask_duplicates=True).numpy()
    assert allowed[0, 0] and not allowed[0, 2]  # the same text as q0's positive, owned by q1
    assert allowed[1, 2] and not allowed[1, 0]
    assert not allowed[2, 5]  # a "negative" identical to the query itself
    assert not allowed[0, 6] and not allowed[3, 0]  # positives of the same query text
    assert allowed[0, 1] and allowed[0, 4] and allowed[0, 7]  # real negatives stay
    plain = allowed_mask(batch, slice(0, 4), mask_duplicates=False).numpy()
    assert plain.all()
    q, docs = F.normalize(torch.randn(4, 16), dim=-1), F.normalize(torch.randn(8, 16), dim=-1)
    positive = torch.arange(4) * 2
    got = InfoNCE(0.05)(q, docs, positive, torch.from_numpy(allowed))
    assert float(got) == pytest.approx(reference_loss(q, docs, positive, allowed, 0.05), rel=1e-5)


def test_negative_drawing_is_deterministic_and_follows_policy():
    records = [rec("a", "pa", ["n1", "n2", "n3", "n4"]), rec("b", "pb", ["m1"]), rec("c", "pc", [])]
    d = NegativeDrawer(records, 3, "repeat", seed=1)
    assert d.n_short == 2 and d.n_empty == 1
    assert d.draw(0, 0) == NegativeDrawer(records, 3, "repeat", seed=1).draw(0, 0)
    assert len(set(d.draw(0, 0))) == 3 and set(d.draw(0, 0)) <= {"n1", "n2", "n3", "n4"}
    assert d.draw(1, 0) == ["m1"] * 3  # repeat: its own negative again
    filled = d.draw(2, 0)  # no negatives of its own: other records' documents, never its positive
    assert len(filled) == 3 and "pc" not in filled and "c" not in filled
    assert {tuple(d.draw(0, e)) for e in range(6)} != {tuple(d.draw(0, 0))}  # redrawn per epoch
    r = NegativeDrawer(records, 3, "random", seed=1).draw(1, 0)
    assert r[0] == "m1" and len(r) == 3
    with pytest.raises(ValueError, match=r"fewer than data\.hard_negatives=3"):
        NegativeDrawer(records, 3, "error", seed=1)


def _gather_worker(rank, world, port, out):
    from sfr_ds import dist

    join_gloo(rank, world, port, timeout_s=60)
    torch.manual_seed(0)
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(world * 4, 8)
    q, d = x[rank * 2 : (rank + 1) * 2] @ w, x[world * 2 + rank * 2 : world * 2 + (rank + 1) * 2] @ w
    docs = dist.gather_with_grad(d)
    allowed = torch.ones(2, docs.size(0), dtype=torch.bool)
    loss = InfoNCE(0.1)(
        F.normalize(q, dim=-1), F.normalize(docs, dim=-1), torch.arange(2) + 2 * rank, allowed
    )
    loss.backward()
    grad = dist.all_reduce_sum(w.grad) / world  # what DeepSpeed's gradient averaging does
    if rank == 0:
        out.put(grad.numpy())
    dist.cleanup()


@pytest.mark.integration
def test_gather_with_grad_equals_single_process():
    """Real gloo processes: the cross-rank loss gradient equals one process on the whole batch."""
    world = 2
    torch.manual_seed(0)
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(world * 4, 8)
    q, d = x[: world * 2] @ w, x[world * 2 :] @ w
    loss = InfoNCE(0.1)(
        F.normalize(q, dim=-1), F.normalize(d, dim=-1), torch.arange(4), torch.ones(4, 4, dtype=torch.bool)
    )
    loss.backward()
    port = free_port()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_gather_worker, args=(r, world, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    got = out.get(timeout=120)
    for p in procs:
        p.join(60)
    assert np.abs(got - w.grad.numpy()).max() < 1e-6 * max(1.0, np.abs(w.grad.numpy()).max())


# ----------------------------------------------------------------------------- Matryoshka


def _matryoshka_case(seed=0, n=5, m=9, d=12):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    docs = F.normalize(torch.randn(m, d, generator=g), dim=-1)
    positive = torch.tensor([0, 2, 4, 6, 8][:n])
    allowed = torch.rand(n, m, generator=g) > 0.3
    allowed[torch.arange(n), positive] = True
    return q, docs, positive, allowed


def test_matryoshka_with_the_full_width_alone_is_todays_loss_exactly():
    q, docs, positive, allowed = _matryoshka_case()
    q.requires_grad_(True)
    plain = InfoNCE(0.05)(q, docs, positive, allowed)
    (g_plain,) = torch.autograd.grad(plain, q)
    full = InfoNCE(0.05, dims=[12])(q, docs, positive, allowed)
    (g_full,) = torch.autograd.grad(full, q)
    assert torch.equal(plain, full) and torch.equal(g_plain, g_full)


def test_matryoshka_sums_the_loss_of_each_renormalised_prefix():
    """Against the loop reference on prefixes cut and renormalised in numpy."""
    q, docs, positive, allowed = _matryoshka_case(seed=1)
    dims, weights = [12, 6, 3], [1.0, 0.5, 2.0]

    def cut(x, d):
        x = x.numpy()[:, :d].astype(np.float64)
        return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))

    want = sum(
        w * reference_loss(cut(q, d), cut(docs, d), positive, allowed.numpy(), 0.05)
        for d, w in zip(dims, weights)
    )
    got = InfoNCE(0.05, dims=dims, weights=weights)(q, docs, positive, allowed)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(got) != pytest.approx(float(InfoNCE(0.05)(q, docs, positive, allowed)), rel=1e-2)
    # without normalisation (dot-product models) the prefixes are used as they are
    raw = InfoNCE(0.05, dims=[6], normalize=False)(q, docs, positive, allowed)
    want_raw = reference_loss(q[:, :6], docs[:, :6], positive, allowed.numpy(), 0.05)
    assert float(raw) == pytest.approx(want_raw, rel=1e-5)


def test_matryoshka_row_blocks_add_up_to_the_whole_loss():
    """GradCache's loss stage runs a block of query rows at a time: the shares must add up."""
    q, docs, positive, allowed = _matryoshka_case(seed=2)
    loss = InfoNCE(0.05, dims=[12, 4])
    blocks = loss.by_rows(positive, allowed)
    total = sum(blocks(q[r], docs, r) for r in (slice(0, 2), slice(2, 5)))
    assert float(total) == pytest.approx(float(loss(q, docs, positive, allowed)), rel=1e-6)


def test_matryoshka_dims_wider_than_the_model_are_refused():
    from sfr_ds.config import ConfigError, LossConfig
    from sfr_ds.loss import check_matryoshka_dims

    check_matryoshka_dims(LossConfig(matryoshka_dims=[64, 32]), 64)
    with pytest.raises(ConfigError, match=r"\[128\] exceed the model's embedding width \(64\)"):
        check_matryoshka_dims(LossConfig(matryoshka_dims=[128, 32]), 64)
