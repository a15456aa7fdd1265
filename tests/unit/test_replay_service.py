"""replay/replay_service.py: waiting and release, timeouts, episodes once, stats (no Ray)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from replay.rate_limiter import SampleToInsertRatio
from replay.replay_service import ReplayService
from replay.replay_table import ReplayTable
from tests.unit.transitions import ACTION_DIM, OBS_SHAPE, row_ids_checked, transition_chunk

TASKS = (0, 2)


async def _settle(rounds: int = 5) -> None:
    """Let every ready task run until it blocks again (event-loop turns, not wall time)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_service(spi=None, tolerance=0.0, learning_starts=4, max_insert=8, max_sample=8):
    table = ReplayTable(TASKS, 100, OBS_SHAPE, np.float32, ACTION_DIM)
    limiter = SampleToInsertRatio(spi, tolerance, max_insert, max_sample)
    return ReplayService(table, limiter, learning_starts, seed=0)


def chunk(first_row, per_task=4, episodes=None):
    ids = np.arange(first_row, first_row + per_task * len(TASKS))
    return transition_chunk(ids, np.repeat(TASKS, per_task), episodes)


def test_sample_waits_for_every_task_to_reach_learning_starts():
    async def scenario():
        service = make_service(learning_starts=4)
        waiting = asyncio.ensure_future(service.sample(2, timeout=None))
        await service.insert(transition_chunk(range(10), [0] * 10))  # task 2 still empty
        await _settle()
        assert not waiting.done() and service.blocked_samples == 1
        await service.insert(transition_chunk(range(10, 13), [2] * 3))  # 3 < 4
        await _settle()
        assert not waiting.done()
        await service.insert(transition_chunk([13], [2]))
        await _settle()
        batch = waiting.result()
        rows = {**{i: 0 for i in range(10)}, **{i: 2 for i in range(10, 14)}}
        row_ids_checked(batch, rows, TASKS)
        assert batch["inserted"] == 14 and batch["obs"].shape == (2, 2, *OBS_SHAPE)

    asyncio.run(scenario())


def test_sample_times_out_with_none_and_counts_it():
    async def scenario():
        service = make_service(learning_starts=4)
        await service.insert(chunk(0, per_task=2))
        assert await service.sample(2, timeout=0.01) is None
        assert service.sample_timeouts == 1 and service.limiter.sampled == 0

    asyncio.run(scenario())


def test_insert_waits_for_the_learner_and_is_released_by_a_sample():
    async def scenario():
        # SPI 1, inserts of 8, samples of 8 (4 per task): the smallest buffer is 8.
        service = make_service(spi=1.0, learning_starts=4)
        await service.insert(chunk(0))  # reaches the minimum size; offset = 8
        await service.insert(chunk(100))  # diff 8 = tolerance
        blocked = asyncio.ensure_future(service.insert(chunk(200)))
        await _settle()
        assert not blocked.done() and service.blocked_inserts == 1
        assert service.table.size(0) == 8  # nothing of the waiting chunk is stored yet
        assert await service.sample(4, timeout=None) is not None  # diff 0: room for 8 more
        await _settle()
        assert blocked.result() == {"inserted": 24, "size": 24, "weights_version": -1}
        # diff 8 again; two samples bring it to -8 = -tolerance, and a third waits for inserts
        assert await service.sample(4, timeout=None) is not None
        assert await service.sample(4, timeout=None) is not None
        waiting = asyncio.ensure_future(service.sample(4, timeout=None))
        await _settle()
        assert not waiting.done() and service.blocked_samples == 1
        await service.insert(chunk(300))
        await _settle()
        assert waiting.done() and waiting.result() is not None

    asyncio.run(scenario())


def test_episodes_are_handed_out_exactly_once():
    async def scenario():
        service = make_service(learning_starts=1)
        handed = []
        episode_rows = [[0, 10.0 * i, 50 + i, np.nan if i % 2 else 1.0] for i in range(7)]
        await service.insert(chunk(0, episodes=episode_rows[:2]))
        await service.insert(chunk(10, episodes=episode_rows[2:3]))
        handed.append((await service.sample(1))["episodes"])
        handed.append((await service.sample(1))["episodes"])  # nothing new ended
        await service.insert(chunk(20, per_task=0, episodes=episode_rows[3:5]))  # episodes only
        await service.insert(chunk(30, episodes=episode_rows[5:]))
        handed.append((await service.sample(1))["episodes"])
        handed.append((await service.sample(1))["episodes"])
        return handed, episode_rows

    (first, second, third, fourth), episode_rows = asyncio.run(scenario())
    np.testing.assert_array_equal(first, episode_rows[:3])
    np.testing.assert_array_equal(third, episode_rows[3:])
    assert second.shape == (0, 4) and fourth.shape == (0, 4)


def test_episodes_only_reach_the_sample_after_them():
    async def scenario():
        service = make_service(learning_starts=1)
        await service.insert(chunk(0))
        await service.sample(1)
        await service.insert(chunk(10, episodes=[[2, 1.0, 3, np.nan]]))
        return (await service.sample(1))["episodes"]

    np.testing.assert_array_equal(asyncio.run(scenario()), [[2, 1.0, 3, np.nan]])


def test_stats_and_bad_input():
    async def scenario():
        service = make_service(spi=0.5, learning_starts=2)
        await service.insert(chunk(0, per_task=3))
        await service.insert(transition_chunk([50], [2]))
        await service.sample(1)
        with pytest.raises(ValueError, match="insert of 10 transitions exceeds the 8"):
            await service.insert(chunk(60, per_task=5))
        with pytest.raises(ValueError, match="episodes has shape"):
            await service.insert(dict(chunk(70), episodes=np.zeros((1, 3))))
        return service.stats()

    stats = asyncio.run(scenario())
    assert stats["replay/size"] == 7 and stats["replay/inserted"] == 7
    assert stats["replay/size/0"] == 3 and stats["replay/size/2"] == 4
    assert stats["replay/sampled"] == 2
    assert stats["replay/tolerance"] == (8 * 0.5 + 8) / 2  # tolerance 0 picked the bound
    # 1 insert after the minimum size (6 inserted then) and 2 sampled: 2 per insert
    assert stats["replay/samples_per_insert"] == 2.0
    assert stats["replay/blocked_inserts"] == 0 and stats["replay/blocked_samples"] == 0
    with pytest.raises(ValueError, match="replay.learning_starts: 101 exceeds"):
        make_service(learning_starts=101)


def test_insert_replies_carry_the_newest_published_weights_version():
    async def scenario():
        service = make_service()
        assert (await service.insert(chunk(0)))["weights_version"] == -1
        service.set_weights_version(5)
        reply = await service.insert(chunk(4))
        assert reply["weights_version"] == 5 and reply["size"] == len(service.table)
        service.set_weights_version(3)  # a restarted learner went back to its checkpoint
        assert (await service.insert(chunk(0)))["weights_version"] == 3

    asyncio.run(scenario())


def test_a_resumed_run_counts_its_frames_on_from_the_checkpoint():
    """The learner's env frames are the inserts the samples report; after a resume they go on
    from the checkpoint's frames, so run.total_frames stays the whole run's budget."""
    async def scenario():
        service = make_service(learning_starts=1)
        service.count_earlier_inserts(1000)
        await service.insert(transition_chunk(range(6), [0, 0, 0, 2, 2, 2]))
        batch = await service.sample(1, timeout=1.0)
        assert batch["inserted"] == 1006
        assert service.stats()["replay/inserted"] == 6  # this start's inserts, for the rate limit

    asyncio.run(scenario())
