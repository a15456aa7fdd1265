"""replay/sharding.py and learner/sac/source.py without Ray: how chunks are split across shards,
the rate-limit sizes of each shard, and how ReplaySource merges, prefetches and counts.
(Real Ray: tests/integration/test_replay_shards.py.)"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from accord.config import config_from_dict
from learner.sac.source import ReplaySource
from replay.rate_limiter import SampleToInsertRatio
from replay.replay_service import ReplayService
from replay.replay_table import ReplayTable
from envs.spec import EnvSpec
from replay.sharding import (checked_shard_settings, shard_of_task, shard_settings, split_by_shard,
                             start_replay_shards, tasks_of_shard)
from tests.unit.transitions import ACTION_DIM, OBS_SHAPE, row_ids_checked, transition_chunk


def sac_config(tasks=4, shards=2, actors=4, **replay):
    return config_from_dict({
        "env": {"kind": "gym", "tasks": [f"t{i}" for i in range(tasks)], "envs_per_actor": 2},
        "actors": {"num_actors": actors, "unroll_length": 5},
        "replay": {"shards": shards, "learning_starts": 3, "capacity_per_task": 50, **replay},
        "learner": {"algorithm": "sac", "model": "mlp", "sac": {"batch_per_task": 6}}})


def test_tasks_are_partitioned_modulo_the_shards():
    assert [shard_of_task(k, 3) for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert tasks_of_shard(1, 7, 3) == [1, 4]
    with pytest.raises(ValueError, match="replay.shards"):
        shard_of_task(1, 0)


def test_split_by_shard_routes_rows_and_episodes_by_task():
    task_ids = [0, 3, 1, 2, 3, 0, 1]
    episodes = [[3, 1.0, 10, np.nan], [0, 2.0, 20, 1.0], [3, 3.0, 30, 0.0]]
    chunk = transition_chunk(range(7), task_ids, episodes)
    parts = split_by_shard(chunk, 2)
    assert sorted(parts) == [0, 1]
    np.testing.assert_array_equal(parts[0]["task_id"], [0, 2, 0])
    np.testing.assert_array_equal(parts[1]["task_id"], [3, 1, 3, 1])
    np.testing.assert_array_equal(parts[1]["obs"][:, 0], [1, 2, 4, 6])  # rows keep their order
    np.testing.assert_array_equal(parts[1]["version"], [7, 14, 28, 42])  # and their fields
    np.testing.assert_array_equal(parts[0]["episodes"], [[0, 2.0, 20, 1.0]])
    np.testing.assert_array_equal(parts[1]["episodes"], [[3, 1.0, 10, np.nan], [3, 3.0, 30, 0.0]])
    only_task_2 = split_by_shard(transition_chunk([9], [2]), 4)
    assert list(only_task_2) == [2]  # shards with nothing to insert get no call
    with pytest.raises(ValueError, match="negative task id"):
        split_by_shard(transition_chunk([1], [-1]), 2)


def test_shard_settings_size_the_rate_limiter():
    one_task_each = shard_settings(sac_config(tasks=4, shards=2, actors=4), 4, 1)
    assert one_task_each == {"task_ids": [1, 3], "max_insert": 5 * 2, "max_sample": 6 * 2}
    # Fewer actors than tasks (dealt round robin; not valid in today's config, so built past it)
    cfg = sac_config(tasks=4, shards=2, actors=4)
    two_actors = cfg.model_copy(update={"actors": cfg.actors.model_copy(update={"num_actors": 2})})
    assert shard_settings(two_actors, 4, 0)["max_insert"] == 5 * 2 * 2  # one actor: tasks 0, 2
    with pytest.raises(ValueError, match="replay.shards: 5 shards for 4 tasks"):
        shard_settings(sac_config(tasks=4, shards=5), 4, 4)


class NoActors:
    """Stands in for ReplayActor: these settings must be refused before any actor (or Ray) starts."""

    @staticmethod
    def options(**_):
        raise AssertionError("start_replay_shards started a replay actor with settings that deadlock")


def test_start_replay_shards_refuses_deadlock_prone_settings_before_starting_any(monkeypatch):
    monkeypatch.setattr("replay.replay_actor.ReplayActor", NoActors)
    spec = EnvSpec(obs_shape=OBS_SHAPE, obs_dtype=np.float32, action_dim=ACTION_DIM)
    cfg = sac_config(samples_per_insert=4.0, tolerance=26.0)

    def replay_set(**fields):  # past the config's own validation, to reach these checks
        return cfg.model_copy(update={"replay": cfg.replay.model_copy(update=fields)})

    # inserts of 10, samples of 12 per shard, SPI 4: the buffer must be (40 + 12) / 2 = 26
    with pytest.raises(ValueError, match=r"replay\.tolerance: 25 can deadlock.* = 26"):
        start_replay_shards(replay_set(tolerance=25.0), spec, "x")
    with pytest.raises(ValueError, match=r"replay\.learning_starts: 60 exceeds"):
        start_replay_shards(replay_set(learning_starts=60), spec, "x")
    with pytest.raises(AssertionError, match="started a replay actor"):  # 26 is enough
        start_replay_shards(cfg, spec, "x")


class FakeShard:
    """A ReplayService on an event loop of its own, behind `sample.remote` like a Ray handle
    (replies come back resolved, as `ray.get` would return them)."""

    def __init__(self, tasks, timeout_after=None):
        table = ReplayTable(tasks, 50, OBS_SHAPE, np.float32, ACTION_DIM)
        self.service = ReplayService(table, SampleToInsertRatio(None, 0.0, 1, 1), learning_starts=1)
        self.loop = asyncio.new_event_loop()
        self.calls = 0
        self.sample = self

    def remote(self, batch_per_task, timeout):
        self.calls += 1
        return self.loop.run_until_complete(self.service.sample(batch_per_task, 0.0))

    def insert(self, chunk):
        return self.loop.run_until_complete(self.service.insert(chunk))


def test_replay_source_merges_shards_in_task_order_and_counts_losses():
    cfg = sac_config(tasks=4, shards=2, prefetch=3)
    shards = [FakeShard([0, 2]), FakeShard([1, 3])]
    source = ReplaySource(shards, cfg)
    rows = {}
    for first, task in ((0, 0), (100, 1), (200, 2)):  # task 3 is still empty: shard 1 times out
        chunk = transition_chunk(range(first, first + 10), [task] * 10, [[task, first, 10, np.nan]])
        shards[task % 2].insert(chunk)
        rows.update({r: task for r in range(first, first + 10)})
    reply = source.request()
    assert [s.calls for s in shards] == [4, 4]  # the returned request plus 3 in flight
    assert source.receive(reply) is None
    assert source.timeouts == 1 and source.lost == 2 * 6  # shard 0 handed out 6 rows of 2 tasks
    shards[1].insert(transition_chunk(range(300, 310), [3] * 10, [[3, 300, 10, 1.0]]))
    rows.update({r: 3 for r in range(300, 310)})
    batch = source.receive([s.sample.remote(6, 1.0) for s in shards])
    assert batch["obs"].shape == (4, 6, *OBS_SHAPE) and batch["versions"].shape == (24,)
    row_ids_checked(batch, rows, range(4))
    # the episodes of the lost batch's shard 0 are not lost with it, and none comes twice
    assert sorted(batch["episodes"][:, 1].tolist()) == [0, 100, 200, 300]
    assert batch["inserted"] == 40
    assert source.receive([s.sample.remote(6, 1.0) for s in shards])["episodes"].shape == (0, 4)
    with pytest.raises(ValueError, match="1 replies for 2 shards"):
        source.receive([None])


def test_split_by_shard_with_one_shard_or_nothing_to_send():
    chunk = transition_chunk(range(3), [0, 1, 2])
    assert split_by_shard(chunk, 1) == {0: chunk}  # one shard: the chunk as it is, no copy
    episodes_only = transition_chunk([], [], [[1, 5.0, 10, 1.0]])
    assert list(split_by_shard(episodes_only, 1)) == [0]  # an ended episode alone is still sent
    assert split_by_shard(transition_chunk([], []), 1) == {}
    assert split_by_shard(transition_chunk([], []), 3) == {}
    with pytest.raises(ValueError, match="replay.shards must be >= 1, got 0"):
        split_by_shard(chunk, 0)
    with pytest.raises(ValueError, match="task_id must be >= 0, got -2"):
        shard_of_task(-2, 2)


def test_split_by_shard_without_episodes_sends_none():
    chunk = transition_chunk(range(4), [1, 3, 1, 3])
    del chunk["episodes"]
    parts = split_by_shard(chunk, 2)
    assert list(parts) == [1]  # no episode of task 0 appears from nowhere
    assert parts[1]["episodes"].shape == (0, 4)
    chunk["episodes"] = []  # an empty list of episodes, as a plain list
    assert list(split_by_shard(chunk, 2)) == [1]


def test_split_by_shard_routes_episodes_by_their_task_column_as_floats():
    # returns (column 1) whose parity differs from their task's, and integer-valued input
    chunk = transition_chunk(range(2), [0, 1])
    chunk["episodes"] = [[0, 1, 4, 1], [1, 2, 4, 0]]
    parts = split_by_shard(chunk, 2)
    np.testing.assert_array_equal(parts[0]["episodes"], [[0, 1, 4, 1]])
    np.testing.assert_array_equal(parts[1]["episodes"], [[1, 2, 4, 0]])
    assert parts[0]["episodes"].dtype == np.float64  # a NaN success must fit


def test_shard_settings_round_the_tasks_per_actor_up():
    cfg = sac_config(tasks=3, shards=1, actors=3)
    two_actors = cfg.model_copy(update={"actors": cfg.actors.model_copy(update={"num_actors": 2})})
    settings = shard_settings(two_actors, 3, 0)
    assert settings["max_insert"] == 5 * 2 * 2  # 3 tasks on 2 actors: one actor steps 2 tasks
    assert isinstance(settings["max_insert"], int)


def test_learning_starts_may_equal_the_capacity():
    cfg = sac_config(learning_starts=50)
    assert [s["task_ids"] for s in checked_shard_settings(cfg)] == [[0, 2], [1, 3]]


class RecordingActors:
    """Stands in for ReplayActor: records the name and arguments each shard is started with."""

    started: list = []

    @classmethod
    def options(cls, **options):
        return _Remote(cls.started, options)


class _Remote:
    def __init__(self, started, options):
        self.started, self.options = started, options

    def remote(self, *args):
        self.started.append((self.options, args))
        return len(self.started) - 1


def test_start_replay_shards_starts_each_shard_with_its_own_settings(monkeypatch):
    monkeypatch.setattr("replay.replay_actor.ReplayActor", RecordingActors)
    monkeypatch.setattr(RecordingActors, "started", [])
    spec = EnvSpec(obs_shape=OBS_SHAPE, obs_dtype=np.float32, action_dim=ACTION_DIM)
    cfg = sac_config(tasks=4, shards=2, samples_per_insert=4.0, tolerance=30.0)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": 17})})
    handles = start_replay_shards(cfg, spec, "run9")
    assert handles == [0, 1]
    assert [options for options, _ in RecordingActors.started] == [
        {"name": "accord:run9:replay:0"}, {"name": "accord:run9:replay:1"}]
    for shard, (_, args) in enumerate(RecordingActors.started):
        assert args == (shard, [shard, shard + 2], spec, 50, 3, 4.0, 30.0, 10, 12, 17)
