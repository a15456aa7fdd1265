"""replay/replay_service.py `ReplayActor`: what one shard is built from and what its methods hand
through, on the class Ray wraps, in process (no Ray: the integration tests run it as an actor)."""
from __future__ import annotations

import asyncio
import os

import numpy as np

import replay.redis_table
from envs import EnvSpec
from replay.replay_service import ReplayActor
from replay.replay_table import ReplayTable
from tests.unit.transitions import ACTION_DIM, OBS_SHAPE, transition_chunk

SPEC = EnvSpec(obs_shape=OBS_SHAPE, obs_dtype=np.float32, action_dim=ACTION_DIM)
# the class `@ray.remote` wraps; it runs its methods in the actor's process
ActorClass = ReplayActor.__ray_metadata__.modified_class


def shard(**changes):
    settings = dict(shard=1, task_ids=(2, 0), spec=SPEC, capacity_per_task=50, learning_starts=2,
                    samples_per_insert=1.0, tolerance=0.0, max_insert=8, max_sample=6, seed=5)
    return ActorClass(**{**settings, **changes})


def test_a_shard_holds_its_tasks_table_and_rate_limit():
    actor = shard()
    service = actor.service
    assert actor.shard == 1 and actor.task_ids == [2, 0]
    assert repr(actor) == "ReplayActor(replay shard 1, task ids [2, 0])"
    assert type(service.table) is ReplayTable
    assert service.table.task_ids == [0, 2] and service.table.capacity_per_task == 50
    assert service.table.shapes["obs"] == OBS_SHAPE and service.table.shapes["action"] == (ACTION_DIM,)
    limiter = service.limiter
    assert (limiter.samples_per_insert, limiter.max_insert, limiter.max_sample) == (1.0, 8, 6)
    assert limiter.tolerance == (8 * 1.0 + 6) / 2  # 0 picks the smallest deadlock-free buffer
    assert shard(tolerance=9.5).service.limiter.tolerance == 9.5
    assert service.learning_starts == 2


def test_each_shard_samples_with_the_run_seed_and_its_own_index():
    expected = np.random.default_rng([5, 1]).integers(1 << 30, size=4)
    np.testing.assert_array_equal(shard().service.rng.integers(1 << 30, size=4), expected)
    other = np.random.default_rng([5, 0]).integers(1 << 30, size=4)
    np.testing.assert_array_equal(shard(shard=0).service.rng.integers(1 << 30, size=4), other)


def test_the_actor_methods_reach_the_service():
    async def scenario():
        actor = shard(samples_per_insert=None)
        await actor.count_earlier_inserts(100)
        await actor.set_weights_version(4)
        reply = await actor.insert(transition_chunk(range(4), [0, 0, 2, 2]))
        assert reply == {"inserted": 4, "size": 4, "weights_version": 4}
        batch = await actor.sample(3, 0.5)
        assert batch["obs"].shape == (2, 3, *OBS_SHAPE) and batch["inserted"] == 104
        empty = shard(samples_per_insert=None, learning_starts=1)
        assert await empty.sample(3, 0.01) is None and empty.service.sample_timeouts == 1
        stats = await actor.stats()
        assert stats["replay/inserted"] == 4.0 and stats["replay/sampled"] == 6.0
        assert await actor.pid() == os.getpid()

    asyncio.run(scenario())


def test_a_shard_with_redis_keeps_its_table_there_under_the_namespace(monkeypatch):
    class DurableTable(ReplayTable):
        def __init__(self, task_ids, capacity, obs_shape, obs_dtype, action_dim, client, namespace):
            super().__init__(task_ids, capacity, obs_shape, obs_dtype, action_dim)
            self.client, self.namespace = client, namespace

    monkeypatch.setattr(replay.redis_table, "RedisReplayTable", DurableTable)
    monkeypatch.setattr(replay.redis_table, "redis_client", lambda url: f"client of {url}")
    actor = shard(redis_url="redis://db:6379/2", namespace="accord:run1")
    table = actor.service.table
    assert type(table) is DurableTable and table.task_ids == [0, 2]
    assert (table.client, table.namespace) == ("client of redis://db:6379/2", "accord:run1")
