"""The replay service's Ray wrapper: one `ReplayActor` is one shard of the replay, a
`ReplayService` (replay/replay_service.py) run by the actor's event loop. replay/sharding.py
partitions the tasks and starts the shards."""
from __future__ import annotations

import os
from typing import Sequence

import ray

from replay.rate_limiter import SampleToInsertRatio
from replay.replay_service import ReplayService, make_table


@ray.remote(num_cpus=0, max_concurrency=1000)
class ReplayActor:
    """One shard of the replay service: the tasks `task_ids`, their table and rate limiter.
    With `redis_url` the table is the durable one (replay/redis_table.py) under `namespace`."""

    def __init__(self, shard: int, task_ids: Sequence[int], spec, capacity_per_task: int,
                 learning_starts: int, samples_per_insert: float | None, tolerance: float,
                 max_insert: int, max_sample: int, seed: int = 0, redis_url: str | None = None,
                 namespace: str | None = None):
        self.shard = shard
        self.task_ids = list(task_ids)
        table = make_table(task_ids, capacity_per_task, spec, redis_url, namespace)
        limiter = SampleToInsertRatio(samples_per_insert, tolerance, max_insert, max_sample)
        self.service = ReplayService(table, limiter, learning_starts, seed=[seed, shard])

    def __repr__(self) -> str:
        return f"ReplayActor(replay shard {self.shard}, task ids {self.task_ids})"

    async def insert(self, chunk: dict) -> dict:
        return await self.service.insert(chunk)

    async def sample(self, batch_per_task: int, timeout: float | None = None) -> dict | None:
        return await self.service.sample(batch_per_task, timeout)

    async def count_earlier_inserts(self, frames: int) -> None:
        self.service.count_earlier_inserts(frames)

    async def set_weights_version(self, version: int) -> None:
        self.service.set_weights_version(version)

    async def stats(self) -> dict[str, float]:
        return self.service.stats()

    async def pid(self) -> int:
        """The actor's process id, for whoever must signal it (tests kill it)."""
        return os.getpid()
