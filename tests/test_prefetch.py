"""The training loop's prefetch: step s+1's inputs are made during step s, and nothing else changes."""

import threading

import pytest

from sfr_ds.data.prefetch import prefetched

GUARD = 60  # seconds; only a deadlock guard, nothing is timed


def test_each_step_gets_its_own_item_in_order():
    calls = []

    def make(step):
        calls.append(step)
        return step * 10

    got = [(s, item) for s, item, _ in prefetched(make, range(3, 8))]
    assert got == [(3, 30), (4, 40), (5, 50), (6, 60), (7, 70)]
    assert calls == [3, 4, 5, 6, 7]
    assert list(prefetched(make, range(5, 5))) == []


def test_next_step_is_made_while_the_caller_works_on_this_one():
    """Step s's consumer waits for make(s + 1) to run: without prefetching it never would."""
    started = {s: threading.Event() for s in range(3)}
    threads = {}

    def make(step):
        threads[step] = threading.current_thread()
        started[step].set()
        return step

    for step, _, _ in prefetched(make, range(3)):
        if step + 1 < 3:
            assert started[step + 1].wait(GUARD), f"make({step + 1}) did not run during step {step}"
    assert all(t is not threading.main_thread() for t in threads.values())


def test_waited_is_the_time_the_caller_was_blocked():
    """make(1) cannot finish until 0.3 s after the caller asks for it: the caller waited that long."""
    release = threading.Event()

    def make(step):
        if step == 1:
            assert release.wait(GUARD)
        return step

    waits = {}
    for step, _, waited in prefetched(make, range(3)):
        waits[step] = waited
        if step == 0:
            threading.Timer(0.3, release.set).start()
    assert waits[1] >= 0.3 > waits[0]


def test_an_error_surfaces_at_its_own_step():
    def make(step):
        if step == 2:
            raise ValueError("bad record in step 2")
        return step

    seen = []
    with pytest.raises(ValueError, match="bad record in step 2"):
        for step, _, _ in prefetched(make, range(5)):
            seen.append(step)
    assert seen == [0, 1]


def test_stopping_early_makes_at_most_one_step_ahead():
    calls = []
    gen = prefetched(lambda s: calls.append(s) or s, range(100))
    for step, _, _ in gen:
        if step == 3:
            break
    gen.close()  # waits for the call in flight
    assert calls == [0, 1, 2, 3, 4]
