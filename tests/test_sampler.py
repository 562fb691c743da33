"""Global batches: one dataset per step when homogeneous, mixed otherwise, pure in (seed, epoch, step)."""

import numpy as np
import pytest

from sfr_ds.config import TrainConfig
from sfr_ds.data.sampler import BatchPlan
from sfr_ds.data.step_inputs import rank_rows

GROUPS = {"a": list(range(0, 50)), "b": list(range(50, 130)), "c": list(range(130, 142))}
OWNER = {i: name for name, idx in GROUPS.items() for i in idx}


def plan(**kw):
    args = dict(homogeneous=True, seed=7)
    args.update(kw)
    return BatchPlan(GROUPS, 16, **args)


def test_homogeneous_batches_come_from_one_dataset_and_split_over_ranks():
    p, cfg = plan(), TrainConfig()
    cfg.data.global_batch_size = 16
    assert p.steps_per_epoch == 50 // 16 + 80 // 16  # 'c' (12 records) cannot fill a batch
    assert p.never_drawn() == {"c": 12}
    seen = []
    for step in range(3 * p.steps_per_epoch):
        b = p.batch(step)
        assert len(b.indices) == 16
        assert {OWNER[int(i)] for i in b.indices} == {b.dataset}
        shards = [b.indices[rank_rows(cfg, r, 4)] for r in range(4)]  # what each of 4 ranks trains on
        assert np.array_equal(np.concatenate(shards), b.indices)
        assert all({OWNER[int(i)] for i in s} == {b.dataset} for s in shards)
        seen.append(b.dataset)
    # datasets drawn in proportion to their number of full batches
    assert seen.count("a") == 3 * 3 and seen.count("b") == 3 * 5


def test_no_record_twice_in_an_epoch_and_epochs_reshuffle():
    p = plan()
    e0 = np.concatenate([p.batch(s).indices for s in range(p.steps_per_epoch)])
    e1 = np.concatenate([p.batch(s).indices for s in range(p.steps_per_epoch, 2 * p.steps_per_epoch)])
    assert len(set(e0.tolist())) == len(e0)
    assert not np.array_equal(e0, e1)


def test_mixed_batches_mix_datasets():
    p = plan(homogeneous=False)
    assert p.steps_per_epoch == 142 // 16
    mixed = [len({OWNER[int(i)] for i in p.batch(s).indices}) > 1 for s in range(p.steps_per_epoch)]
    assert sum(mixed) >= p.steps_per_epoch - 1
    assert all(p.batch(s).dataset is None for s in range(p.steps_per_epoch))


def test_order_is_a_pure_function_of_seed_epoch_step():
    a, b = plan(), plan()
    # a fresh plan asked in another order (as after a resume) gives the same batches
    for step in [17, 3, 0, 9, 25]:
        assert np.array_equal(a.batch(step).indices, b.batch(step).indices)
    c = plan(seed=8)
    assert any(not np.array_equal(a.batch(s).indices, c.batch(s).indices) for s in range(5))


def test_weights_scale_batches_per_epoch():
    p = plan(weights={"a": 2.0, "b": 0.4})
    assert p.batches_per_dataset == {"a": 6, "b": 2, "c": 0}
    drawn = [p.batch(s).dataset for s in range(p.steps_per_epoch)]
    assert drawn.count("a") == 6 and drawn.count("b") == 2
    with pytest.raises(ValueError, match="not in the data"):
        plan(weights={"zzz": 1.0})


def test_rank_scope_makes_each_rank_share_homogeneous_and_mixes_across_ranks():
    p, cfg = plan(shards=4), TrainConfig()
    cfg.data.global_batch_size = 16
    # pieces of 4: a 12, b 20, c 3 -> 35 pieces, 8 steps of 4 (3 pieces dropped)
    assert p.steps_per_epoch == (50 // 4 + 80 // 4 + 12 // 4) // 4
    assert p.never_drawn() == {}  # 'c' fills a rank's share, not a global batch
    mixed, seen, names = 0, [], set()
    for step in range(p.steps_per_epoch):
        b = p.batch(step)
        per_rank = [{OWNER[int(i)] for i in b.indices[rank_rows(cfg, r, 4)]} for r in range(4)]
        assert all(len(s) == 1 for s in per_rank)  # every rank's share from one dataset
        ranks = set().union(*per_rank)
        assert b.dataset == (ranks.pop() if len(ranks) == 1 else None)
        mixed += b.dataset is None
        seen += b.indices.tolist()
        names |= set().union(*per_rank)
    assert mixed >= 1 and names == {"a", "b", "c"}
    assert len(set(seen)) == len(seen)  # still no record twice in an epoch
    # a cross-check: every share is one of the batches a global plan of 4 queries draws
    one = BatchPlan(GROUPS, 4, homogeneous=True, seed=7)
    pieces = sorted(tuple(sorted(one.batch(s).indices.tolist())) for s in range(one.steps_per_epoch))
    shares = [p.batch(s).indices[4 * r : 4 * r + 4] for s in range(8) for r in range(4)]
    got = sorted(tuple(sorted(share.tolist())) for share in shares)
    assert set(got) <= set(pieces) and len(got) == 32


def test_rank_scope_needs_homogeneous_and_an_even_split():
    with pytest.raises(ValueError, match="homogeneous=true"):
        plan(homogeneous=False, shards=2)
    with pytest.raises(ValueError, match="3 equal pieces"):
        plan(shards=3)


def test_training_data_plans_per_rank_only_when_asked(tmp_path):
    """``TrainingData.load(cfg, world)``: the rank count shapes the plan under
    ``data.homogeneous_scope: rank`` and nothing else (the global plan is the same on any count)."""
    from conftest import TINY

    from sfr_ds.config import load_config
    from sfr_ds.data.step_inputs import TrainingData

    cache = f"data.cache_dir={tmp_path}"
    glob = [TrainingData.load(load_config(TINY, [cache]), w).plan for w in (1, 2)]
    assert [p.shards for p in glob] == [1, 1]
    assert all(np.array_equal(glob[0].batch(s).indices, glob[1].batch(s).indices) for s in range(6))
    ranked = TrainingData.load(load_config(TINY, [cache, "data.homogeneous_scope=rank"]), 2)
    assert ranked.plan.shards == 2
    names = [r.dataset for r in ranked.records]
    shares = [ranked.plan.batch(s).indices.reshape(2, -1) for s in range(ranked.plan.steps_per_epoch)]
    assert all(len({names[int(i)] for i in share}) == 1 for pair in shares for share in pair)
    assert any(len({names[int(i)] for i in pair.ravel()}) > 1 for pair in shares)
