"""The replay service of off-policy training: a `ReplayTable` behind a rate limiter, as asyncio.

Rollout actors `insert` transition chunks, the learner `sample`s task-balanced batches. Both
sides wait on one condition: an insert while the rate limiter says the actors ran ahead of the
learner (Reverb's SampleToInsertRatio, replay/rate_limiter.py), a sample until every task holds
`learning_starts` transitions and while the learner ran ahead. Every call that had to wait is
counted, so the metrics show which side sets the pace.

Unlike the FIFO queue (replay/service.py) the data itself lives here: a transition is too small
to be worth an object-store entry, so chunks arrive as arrays and batches leave as arrays.
Episode statistics ride along with the chunks; each is handed out once, with the next sample.

`ReplayService` is a plain class, unit-testable under asyncio; `ReplayActor`
(replay/replay_actor.py) is its Ray wrapper. One actor is one shard; replay/sharding.py
partitions the tasks and starts them.
"""
from __future__ import annotations

import asyncio
import time
from typing import Sequence

import numpy as np

from replay.rate_limiter import SampleToInsertRatio
from replay.replay_table import ReplayTable


class ReplayService:
    def __init__(self, table: ReplayTable, limiter: SampleToInsertRatio, learning_starts: int,
                 seed: int | Sequence[int] = 0):
        if learning_starts < 1:
            raise ValueError(f"replay.learning_starts must be >= 1, got {learning_starts}")
        if learning_starts > table.capacity_per_task:
            raise ValueError(f"replay.learning_starts: {learning_starts} exceeds replay.capacity_per_task "
                             f"{table.capacity_per_task}; no task could ever be sampled")
        self.table = table
        self.limiter = limiter
        self.learning_starts = learning_starts
        self.rng = np.random.default_rng(seed)
        self._changed = asyncio.Condition()
        self._episodes: list[np.ndarray] = []
        self.blocked_inserts = 0
        self.blocked_samples = 0
        self.sample_timeouts = 0
        self.blocked_insert_seconds = 0.0
        self.weights_version = -1
        self.inserted_before = 0  # env frames of the run's earlier starts (see count_earlier_inserts)
        if table.holds_at_least(learning_starts):  # a durable table that restored its rows
            self.limiter.reach_min_size()

    def count_earlier_inserts(self, frames: int) -> None:
        """A resumed run's frames so far: the `inserted` this shard hands the learner (its env
        frames, run.total_frames' measure) counts on from them, not from 0. One shard only."""
        self.inserted_before = int(frames)

    def set_weights_version(self, version: int) -> None:
        """The learner published `version`: the next insert replies tell the actors. The newest
        notice wins even when it is older: a restarted learner goes back to its checkpoint."""
        self.weights_version = version

    async def insert(self, chunk: dict) -> dict:
        """Store a chunk of transitions (and its ended episodes); waits while the rate limiter
        holds inserts back. Returns this shard's counters after the insert."""
        n = self.table.validate(chunk)  # bad input fails before anything waits or is stored
        episodes = np.asarray(chunk.get("episodes", np.zeros((0, 4))), dtype=np.float64)
        if episodes.ndim != 2 or episodes.shape[1] != 4:
            raise ValueError(f"transition chunk: episodes has shape {episodes.shape}, expected [E, 4]")
        async with self._changed:
            if not self.limiter.can_insert(n):
                self.blocked_inserts += 1
                start = time.monotonic()
                await self._changed.wait_for(lambda: self.limiter.can_insert(n))
                self.blocked_insert_seconds += time.monotonic() - start
            self.table.insert(chunk)
            self.limiter.insert(n)
            if len(episodes):
                self._episodes.append(episodes)
            if not self.limiter.min_size_reached and self.table.holds_at_least(self.learning_starts):
                self.limiter.reach_min_size()
            self._changed.notify_all()
            return {"inserted": self.limiter.inserted, "size": len(self.table),
                    "weights_version": self.weights_version}

    async def sample(self, batch_per_task: int, timeout: float | None = None) -> dict | None:
        """`batch_per_task` transitions of each of this shard's tasks ([K_s, n, ...] arrays and
        `task_ids` [K_s]), plus `episodes` drained since the last sample and `inserted`. Waits
        up to `timeout` seconds (None: forever) for the minimum size and the rate limiter;
        None on timeout."""
        m = batch_per_task * len(self.table.task_ids)
        async with self._changed:
            if not self.limiter.can_sample(m):
                self.blocked_samples += 1
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.limiter.can_sample(m)), timeout)
                except asyncio.TimeoutError:
                    self.sample_timeouts += 1
                    return None
            batch = self.table.sample(batch_per_task, self.rng)
            self.limiter.sample(m)
            batch["episodes"] = (np.concatenate(self._episodes) if self._episodes
                                 else np.zeros((0, 4), dtype=np.float64))
            self._episodes = []
            batch["inserted"] = self.inserted_before + self.limiter.inserted
            self._changed.notify_all()
            return batch

    def stats(self) -> dict[str, float]:
        out = {
            "replay/size": float(len(self.table)),
            "replay/inserted": float(self.limiter.inserted),
            "replay/sampled": float(self.limiter.sampled),
            "replay/samples_per_insert": self.limiter.observed_ratio(),
            "replay/rate_diff": self.limiter.diff(),
            "replay/tolerance": self.limiter.tolerance,
            "replay/blocked_inserts": float(self.blocked_inserts),
            "replay/blocked_insert_seconds": self.blocked_insert_seconds,
            "replay/blocked_samples": float(self.blocked_samples),
            "replay/sample_timeouts": float(self.sample_timeouts),
        }
        for task in self.table.task_ids:
            out[f"replay/size/{task}"] = float(self.table.size(task))
        out.update(self.table.store_stats())
        return out


def make_table(task_ids: Sequence[int], capacity_per_task: int, spec, redis_url: str | None = None,
               namespace: str | None = None) -> ReplayTable:
    """The in-memory table, or with `redis_url` the durable one, which starts with what Redis
    holds under `namespace` for these tasks."""
    if redis_url is None:
        return ReplayTable(task_ids, capacity_per_task, spec.obs_shape, spec.obs_dtype, spec.action_dim)
    from replay.redis_table import RedisReplayTable, redis_client

    return RedisReplayTable(task_ids, capacity_per_task, spec.obs_shape, spec.obs_dtype,
                            spec.action_dim, redis_client(redis_url), namespace)
