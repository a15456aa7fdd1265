"""replay/replay_service.py: settings checks, seeding, counters over several waits, a restored
table, the full stats and which table make_table builds (no Ray)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

import replay.redis_table
import replay.replay_service as replay_service
from replay.rate_limiter import SampleToInsertRatio
from replay.replay_service import ReplayService, make_table
from replay.replay_table import ReplayTable
from tests.unit.transitions import ACTION_DIM, OBS_SHAPE, transition_chunk

TASKS = (0, 2)


async def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_service(spi=None, tolerance=0.0, learning_starts=4, capacity=100, seed=0, table=None):
    if table is None:
        table = ReplayTable(TASKS, capacity, OBS_SHAPE, np.float32, ACTION_DIM)
    limiter = SampleToInsertRatio(spi, tolerance, 8, 8)
    return ReplayService(table, limiter, learning_starts, seed=seed)


def chunk(first_row, per_task=4):
    ids = np.arange(first_row, first_row + per_task * len(TASKS))
    return transition_chunk(ids, np.repeat(TASKS, per_task))


class FakeClock:
    """time.monotonic as the test sets it, so blocked seconds are exact."""

    def __init__(self):
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("learning_starts", [0, -3])
def test_learning_starts_below_one_is_rejected_naming_the_field(learning_starts):
    with pytest.raises(ValueError, match=rf"^replay.learning_starts must be >= 1, got {learning_starts}$"):
        make_service(learning_starts=learning_starts)


def test_learning_starts_of_the_whole_capacity_is_accepted_one_more_is_not():
    service = make_service(learning_starts=5, capacity=5)
    assert service.learning_starts == 5
    with pytest.raises(ValueError) as err:
        make_service(learning_starts=6, capacity=5)
    assert str(err.value) == ("replay.learning_starts: 6 exceeds replay.capacity_per_task 5; "
                              "no task could ever be sampled")


def _rows_sampled(seed):
    async def scenario():
        service = make_service(learning_starts=1, seed=seed)
        await service.insert(chunk(0, per_task=50))
        return [np.rint((await service.sample(4))["obs"][..., 0]) for _ in range(3)]

    return np.stack(asyncio.run(scenario()))


def test_the_seed_fixes_which_rows_are_sampled():
    np.testing.assert_array_equal(_rows_sampled(7), _rows_sampled(7))
    np.testing.assert_array_equal(_rows_sampled([3, 1]), _rows_sampled([3, 1]))
    assert not np.array_equal(_rows_sampled(7), _rows_sampled(8))


def test_a_table_that_restored_its_rows_can_be_sampled_at_once():
    table = ReplayTable(TASKS, 100, OBS_SHAPE, np.float32, ACTION_DIM)
    table.insert(chunk(0, per_task=3))

    async def scenario(learning_starts):
        service = make_service(spi=1.0, learning_starts=learning_starts, table=table)
        return service, await service.sample(2, timeout=0.01)

    service, batch = asyncio.run(scenario(3))
    assert service.limiter.min_size_reached and batch is not None
    assert batch["obs"].shape == (2, 2, *OBS_SHAPE) and batch["inserted"] == 0
    service, batch = asyncio.run(scenario(4))  # 3 rows per task: not yet
    assert not service.limiter.min_size_reached and batch is None


def test_counters_add_up_over_several_waits(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(replay_service, "time", clock)

    async def scenario():
        service = make_service(spi=1.0, learning_starts=4)
        assert await service.sample(1, timeout=0.001) is None
        assert await service.sample(1, timeout=0.001) is None
        await service.insert(chunk(0))  # the minimum size: offset 8
        await service.insert(chunk(100))  # diff 8 = tolerance
        for waited in (2.5, 4.0):
            blocked = asyncio.ensure_future(service.insert(chunk(200)))
            await _settle()
            assert not blocked.done()
            clock.now += waited
            assert await service.sample(4) is not None
            await _settle()
            assert blocked.done()
        return service

    service = asyncio.run(scenario())
    assert service.sample_timeouts == 2 and service.blocked_samples == 2
    assert service.blocked_inserts == 2
    assert service.blocked_insert_seconds == 6.5
    stats = service.stats()
    assert stats["replay/blocked_insert_seconds"] == 6.5
    assert stats["replay/sample_timeouts"] == 2.0


def test_stats_hold_every_counter_under_its_name():
    async def scenario():
        service = make_service(spi=0.5, learning_starts=2)
        await service.insert(chunk(0, per_task=2))  # the minimum size, offset at 4 inserted
        await service.insert(chunk(10, per_task=1))
        await service.sample(1)
        return service

    stats = asyncio.run(scenario()).stats()
    assert stats == {
        "replay/size": 6.0, "replay/inserted": 6.0, "replay/sampled": 2.0,
        "replay/samples_per_insert": 1.0,  # 2 sampled over the 2 inserted since the minimum size
        "replay/rate_diff": 2 * 0.5 - 2,
        "replay/tolerance": (8 * 0.5 + 8) / 2,
        "replay/blocked_inserts": 0.0, "replay/blocked_insert_seconds": 0.0,
        "replay/blocked_samples": 0.0, "replay/sample_timeouts": 0.0,
        "replay/size/0": 3.0, "replay/size/2": 3.0,
    }
    assert all(type(v) is float for v in stats.values())


def test_stats_take_the_tables_store_metrics():
    table = ReplayTable(TASKS, 100, OBS_SHAPE, np.float32, ACTION_DIM)
    table.store_stats = lambda: {"replay/store_bytes": 12.0}
    assert make_service(table=table).stats()["replay/store_bytes"] == 12.0


@pytest.mark.parametrize("episodes", [np.zeros(4), np.zeros((2, 5)), np.zeros((1, 2, 4))])
def test_episodes_of_another_shape_are_refused_and_nothing_is_stored(episodes):
    async def scenario():
        service = make_service(learning_starts=1)
        with pytest.raises(ValueError, match=r"episodes has shape \(.*\), expected \[E, 4\]"):
            await service.insert(dict(chunk(0), episodes=episodes))
        return service

    service = asyncio.run(scenario())
    assert len(service.table) == 0 and service.limiter.inserted == 0


def test_a_chunk_without_episodes_adds_none():
    async def scenario():
        service = make_service(learning_starts=1)
        plain = chunk(0)
        del plain["episodes"]
        await service.insert(plain)
        return (await service.sample(1))["episodes"]

    episodes = asyncio.run(scenario())
    assert episodes.shape == (0, 4) and episodes.dtype == np.float64


def test_count_earlier_inserts_keeps_an_integer():
    service = make_service()
    service.count_earlier_inserts(np.float64(12.0))
    assert service.inserted_before == 12 and type(service.inserted_before) is int


SPEC = SimpleNamespace(obs_shape=(5, 2), obs_dtype=np.uint8, action_dim=3)


def test_make_table_without_redis_is_the_in_memory_table_of_the_spec():
    table = make_table([4, 1], 7, SPEC)
    assert type(table) is ReplayTable
    assert table.task_ids == [1, 4] and table.capacity_per_task == 7
    assert table.shapes["obs"] == (5, 2) and table.dtypes["obs"] == np.uint8
    assert table.shapes["action"] == (3,)


def test_make_table_with_redis_passes_the_client_and_namespace(monkeypatch):
    made = {}

    class FakeRedisTable:
        def __init__(self, *args):
            made["args"] = args

    monkeypatch.setattr(replay.redis_table, "RedisReplayTable", FakeRedisTable)
    monkeypatch.setattr(replay.redis_table, "redis_client", lambda url: ("client", url))
    table = make_table([4, 1], 7, SPEC, redis_url="redis://db:6379/0", namespace="run-a")
    assert type(table) is FakeRedisTable
    assert made["args"] == ([4, 1], 7, (5, 2), np.uint8, 3, ("client", "redis://db:6379/0"), "run-a")


def test_without_a_seed_the_service_samples_as_seed_zero():
    table = ReplayTable(TASKS, 100, OBS_SHAPE, np.float32, ACTION_DIM)
    service = ReplayService(table, SampleToInsertRatio(None, 0.0, 8, 8), 1)
    expected = np.random.default_rng(0).integers(1 << 30, size=4)
    np.testing.assert_array_equal(service.rng.integers(1 << 30, size=4), expected)


def test_episodes_sent_as_integers_come_out_as_floats():
    async def scenario():
        service = make_service(learning_starts=1)
        await service.insert(dict(chunk(0), episodes=[[2, 7, 30, 1]]))
        return (await service.sample(1))["episodes"]

    episodes = asyncio.run(scenario())
    assert episodes.dtype == np.float64 and episodes.tolist() == [[2.0, 7.0, 30.0, 1.0]]
