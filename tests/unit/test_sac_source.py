"""ReplaySource against hand-made shard replies: what it asks each shard for, how it merges
replies into task order, and what it refuses. (With the real replay service:
tests/unit/test_replay_sharding.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from accord.config import config_from_dict
from learner.sac.source import ROW_FIELDS, ReplaySource

N = 2  # rows per task


def _cfg(tasks=3, prefetch=2):
    return config_from_dict({
        "env": {"kind": "gym", "tasks": [f"t{i}" for i in range(tasks)], "envs_per_actor": 2},
        "actors": {"num_actors": tasks, "unroll_length": 5},
        "replay": {"shards": 2, "learning_starts": 3, "capacity_per_task": 50,
                   "prefetch": prefetch},
        "learner": {"algorithm": "sac", "model": "mlp", "sac": {"batch_per_task": N}}})


class RecordingShard:
    """Records each `sample.remote(batch_per_task, timeout)` and returns a numbered reference."""

    def __init__(self):
        self.calls = []
        self.sample = self

    def remote(self, batch_per_task, timeout):
        self.calls.append((batch_per_task, timeout))
        return len(self.calls)


def _reply(tasks, inserted, episodes=()):
    """A shard's sample: row values 10·task + row, so the merged order can be read back."""
    rows = np.array([[10 * t + i for i in range(N)] for t in tasks], dtype=np.float32)
    reply = {k: rows.copy() for k in ROW_FIELDS}
    reply.update(task_ids=np.array(tasks), version=rows.astype(np.int64), inserted=inserted,
                 episodes=np.array(episodes, dtype=np.float64).reshape(-1, 4))
    return reply


def test_requests_ask_every_shard_for_the_batch_with_the_timeout():
    shards = [RecordingShard(), RecordingShard()]
    source = ReplaySource(shards, _cfg(prefetch=2), timeout=0.25)
    assert source.request() == [1, 1]                     # the oldest request
    assert shards[0].calls == [(N, 0.25)] * 3              # it, and 2 kept in flight
    assert source.request() == [2, 2]
    assert len(shards[1].calls) == 4
    assert ReplaySource([RecordingShard()], _cfg()).timeout == 1.0
    fresh = ReplaySource([RecordingShard()], _cfg())
    assert (fresh.lost, fresh.timeouts, fresh.inserted) == (0, 0, 0)


def test_merge_orders_rows_by_task_and_the_insert_count_never_steps_back():
    source = ReplaySource([RecordingShard(), RecordingShard()], _cfg())
    batch = source.receive([_reply([2, 0], 0, [[2, 1.0, 3, 0.0]]), _reply([1], 0)])
    np.testing.assert_array_equal(batch["reward"][:, 0], [0, 10, 20])
    assert batch["obs"].shape == (3, N)
    np.testing.assert_array_equal(batch["versions"], [0, 1, 10, 11, 20, 21])
    assert batch["inserted"] == 0 and batch["episodes"].tolist() == [[2, 1.0, 3, 0.0]]
    assert source.receive([_reply([0, 2], 30), _reply([1], 12)])["inserted"] == 42
    assert source.receive([_reply([0, 2], 5), _reply([1], 1)])["inserted"] == 42  # served late
    assert source.receive([None, _reply([1], 1)]) is None
    assert source.receive([_reply([0, 2], 1), None]) is None
    assert (source.timeouts, source.lost) == (2, N + 2 * N)   # both counts add up


def test_bad_shards_and_replies_are_named():
    with pytest.raises(ValueError, match="^ReplaySource needs at least one replay shard$"):
        ReplaySource([], _cfg())
    source = ReplaySource([RecordingShard(), RecordingShard()], _cfg())
    with pytest.raises(ValueError, match=r"^replay shards returned tasks \[0, 1, 1\], expected 0\.\.2 once each"):
        source.receive([_reply([0, 1], 0), _reply([1], 0)])
