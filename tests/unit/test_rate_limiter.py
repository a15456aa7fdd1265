"""replay/rate_limiter.py: Reverb's SampleToInsertRatio on transition counts (no Ray).

The deadlock bound is checked against a brute-force search of every reachable limiter state,
and the ratio is checked under an insert/sample race through the asyncio ReplayService."""
from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from replay.rate_limiter import SampleToInsertRatio, check_rate_limit, min_tolerance
from replay.replay_service import ReplayService
from replay.replay_table import ReplayTable
from tests.unit.transitions import ACTION_DIM, OBS_SHAPE, transition_chunk


def reachable_deadlock(limiter: SampleToInsertRatio, n: int, m: int) -> float | None:
    """A diff reachable from 0, by inserts of any size 1..n and samples of m, at which neither a
    pending insert of n nor a pending sample of m may go; None if there is none. Diffs are set
    through the sampled count."""
    base = 10**6  # inserts since the minimum size, large enough for any sampled count >= 0

    def at(diff):
        limiter.inserted, limiter.inserted_at_min_size = base, 0
        limiter.sampled = base * limiter.samples_per_insert - diff
        return limiter

    seen, frontier = {0.0}, [0.0]
    while frontier:
        diff = frontier.pop()
        moves = [diff + k * limiter.samples_per_insert for k in range(1, n + 1) if at(diff).can_insert(k)]
        if at(diff).can_sample(m):
            moves.append(diff - m)
        if not at(diff).can_insert(n) and not at(diff).can_sample(m):
            return diff
        for nxt in moves:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return None


@settings(max_examples=60, deadline=None)
@given(spi=st.sampled_from([0.5, 1.0, 2.0, 3.0]), n=st.integers(1, 12), m=st.integers(1, 12))
def test_min_tolerance_is_deadlock_free_and_tight(spi, n, m):
    n = 2 * n  # n * spi stays integral
    tol = min_tolerance(spi, n, m)
    limiter = SampleToInsertRatio(spi, tol, max_insert=n, max_sample=m)
    assert reachable_deadlock(limiter, n, m) is None
    if spi <= 1.0:
        # With diffs on a grid no coarser than 1, one less buffer leaves a reachable deadlock in
        # (tol - n*spi, m - tol); coarser grids (spi 2, m even) may step over that interval.
        limiter.tolerance = tol - 1  # below the bound (the constructor would refuse it)
        assert reachable_deadlock(limiter, n, m) is not None


def test_deadlock_prone_settings_are_rejected_naming_the_field():
    with pytest.raises(ValueError, match=r"replay\.tolerance: 10 can deadlock .*replay\.samples_per_insert=2.*at least .* = 164"):
        check_rate_limit(2.0, 10.0, insert_chunk=100, sample_batch=128)
    with pytest.raises(ValueError, match=r"replay\.tolerance"):
        SampleToInsertRatio(2.0, 163.9, max_insert=100, max_sample=128)
    with pytest.raises(ValueError, match=r"replay\.samples_per_insert"):
        check_rate_limit(float("nan"), 10.0, 1, 1)
    check_rate_limit(2.0, 164.0, 100, 128)  # exactly the bound is enough
    check_rate_limit(None, 0.0, 100, 128)  # no ratio, nothing to deadlock
    assert SampleToInsertRatio(2.0, 0.0, 100, 128).tolerance == 164.0  # 0 picks the bound


def test_inserts_free_until_min_size_then_bounded():
    limiter = SampleToInsertRatio(1.0, 0.0, max_insert=10, max_sample=10)  # tolerance 10
    for _ in range(50):  # before the minimum size inserts never wait, samples always do
        assert limiter.can_insert(10) and not limiter.can_sample(1)
        limiter.insert(10)
    limiter.reach_min_size()  # offset: the 500 inserted so far
    assert limiter.diff() == 0.0 and limiter.can_sample(10)
    limiter.sample(10)
    assert not limiter.can_sample(1)  # diff -10 = -tolerance: the learner ran ahead
    limiter.insert(10)
    limiter.insert(10)
    assert limiter.diff() == 10.0 and not limiter.can_insert(1)  # now the actors ran ahead
    limiter.sample(4)
    assert limiter.can_insert(4) and not limiter.can_insert(5)
    with pytest.raises(ValueError, match="insert of 11 transitions exceeds the 10"):
        limiter.can_insert(11)
    with pytest.raises(ValueError, match="sample of 11 transitions exceeds the 10"):
        limiter.can_sample(11)


def test_no_ratio_gates_samples_on_min_size_only():
    limiter = SampleToInsertRatio(None, 0.0, max_insert=10, max_sample=10)
    assert not limiter.can_sample(10)
    limiter.insert(10)
    limiter.reach_min_size()
    for _ in range(100):
        assert limiter.can_sample(10) and limiter.can_insert(10)
        limiter.sample(10)


@pytest.mark.parametrize("spi,tolerance", [(0.25, 0.0), (1.0, 0.0), (4.0, 0.0), (2.0, 500.0)])
def test_ratio_holds_under_an_insert_sample_race(spi, tolerance):
    """Three producers and a learner race under asyncio, yielding at random; after every
    operation the drift stays within the buffer, and both sides had to wait at some point."""
    tasks, chunk_per_task, batch_per_task = (0, 1), 8, 16
    table = ReplayTable(tasks, 1000, OBS_SHAPE, np.float32, ACTION_DIM)
    limiter = SampleToInsertRatio(spi, tolerance, max_insert=chunk_per_task * len(tasks),
                                  max_sample=batch_per_task * len(tasks))
    service = ReplayService(table, limiter, learning_starts=20, seed=0)
    rng = random.Random(0)
    drift, finished = [], []

    async def producer(first_row):
        for i in range(200):
            ids = np.arange(chunk_per_task * len(tasks)) + first_row + i * 1000
            await service.insert(transition_chunk(ids, np.repeat(tasks, chunk_per_task)))
            drift.append(limiter.diff())
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
        finished.append(first_row)

    async def learner():
        # bounded, so a limiter that never holds the learner back still ends the race
        while (len(finished) < 3 or limiter.can_sample(batch_per_task * len(tasks))) and len(drift) < 10**4:
            if await service.sample(batch_per_task, timeout=5.0) is None:
                break  # deadlocked: the producers' gather then runs into its limit below
            drift.append(limiter.diff())
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)

    async def race():
        await asyncio.wait_for(asyncio.gather(learner(), *(producer(10**6 * p) for p in range(3))), 30)

    asyncio.run(race())
    tol = limiter.tolerance
    assert min(drift) >= -tol and max(drift) <= tol, (min(drift), max(drift), tol)
    assert limiter.sampled > 0
    assert service.blocked_inserts > 0 and service.blocked_samples > 0
    since_start = limiter.inserted - limiter.inserted_at_min_size
    assert abs(since_start * spi - limiter.sampled) <= tol


def test_observed_ratio_counts_samples_per_insert_since_min_size():
    limiter = SampleToInsertRatio(2.0, 0.0, max_insert=4, max_sample=8)
    limiter.insert(4)
    assert limiter.observed_ratio() == 0.0  # nothing can be sampled yet
    limiter.reach_min_size()
    limiter.sample(3)
    assert limiter.observed_ratio() == 3.0  # no insert since: divided by one, not by zero
    limiter.insert(4)
    limiter.sample(3)
    assert limiter.observed_ratio() == 6 / 4


def test_diff_is_zero_until_min_size():
    limiter = SampleToInsertRatio(2.0, 0.0, max_insert=4, max_sample=8)
    limiter.insert(4)
    assert limiter.diff() == 0.0
    limiter.reach_min_size()
    limiter.insert(2)
    assert limiter.diff() == 2 * 2.0


@pytest.mark.parametrize("args,message", [
    ((None, 0.0, 0, 5), r"rate limit: insert chunk \(0\) and sample batch \(5\) must hold at least one"),
    ((None, 0.0, 5, 0), r"rate limit: insert chunk \(5\) and sample batch \(0\) must hold at least one"),
    ((float("inf"), 10.0, 1, 1), r"replay.samples_per_insert: must be a finite number > 0, got inf"),
    ((0.0, 10.0, 1, 1), r"replay.samples_per_insert: must be a finite number > 0, got 0"),
    ((2.0, float("inf"), 1, 1), r"replay.tolerance: must be a finite number >= 0, got inf"),
    ((2.0, -0.5, 1, 1), r"replay.tolerance: must be a finite number >= 0, got -0.5"),
    ((2.0, 0.0, 1, 1), r"replay.tolerance: 0 can deadlock"),
])
def test_each_bad_rate_limit_setting_is_refused_naming_its_field(args, message):
    with pytest.raises(ValueError, match=message):
        check_rate_limit(*args)


def test_a_tolerance_below_one_is_enough_for_small_inserts_and_samples():
    """(1 * 0.1 + 1) / 2 = 0.55 is the bound here: 0.7 passes."""
    check_rate_limit(0.1, 0.7, insert_chunk=1, sample_batch=1)
