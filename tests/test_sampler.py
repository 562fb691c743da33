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
