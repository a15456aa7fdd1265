"""The queue service: a table behind an asyncio Ray actor.

Bulk arrays never pass through this actor: rollout actors `ray.put` an unroll and insert the
*reference* (wrapped in a list so Ray does not resolve it), the learner receives references and
fetches the arrays from the object store (zero-copy on one node). The service only orders,
bounds and counts.

Back-pressure: `insert` awaits while the table is full, so a fast actor fleet slows to the
learner's pace instead of growing memory; every insert that had to wait is counted.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from replay.tables import Table, make_table


class QueueService:
    """Plain class (unit-testable under asyncio); `QueueActor` below is its Ray wrapper."""

    def __init__(self, table: Table):
        self.table = table
        self._changed = asyncio.Condition()
        self.inserted = 0
        self.sampled = 0
        self.blocked_inserts = 0
        self.blocked_seconds = 0.0
        self.inserted_per_task: dict[int, int] = {}

    async def insert(self, wrapped_ref: list, task_id: int) -> int:
        """Insert one item; waits while full. Returns the queue depth after the insert."""
        async with self._changed:
            if not self.table.can_insert():
                self.blocked_inserts += 1
                start = time.monotonic()
                await self._changed.wait_for(self.table.can_insert)
                self.blocked_seconds += time.monotonic() - start
            self.table.insert(wrapped_ref[0], task_id)
            self.inserted += 1
            self.inserted_per_task[task_id] = self.inserted_per_task.get(task_id, 0) + 1
            self._changed.notify_all()
            return len(self.table)

    async def sample(self, n: int, timeout: float | None = None) -> list[Any] | None:
        """n items, waiting up to `timeout` seconds for them; None on timeout."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.table.can_sample(n)), timeout)
            except asyncio.TimeoutError:
                return None
            items = self.table.sample(n)
            self.sampled += n
            self._changed.notify_all()
            return items

    def stats(self) -> dict[str, float]:
        return {
            "queue/depth": float(len(self.table)),
            "queue/capacity": float(self.table.capacity),
            "queue/inserted": float(self.inserted),
            "queue/sampled": float(self.sampled),
            "queue/blocked_inserts": float(self.blocked_inserts),
            "queue/blocked_seconds": self.blocked_seconds,
        }


@ray.remote(num_cpus=0, max_concurrency=1000)
class QueueActor:
    def __init__(self, table_kind: str, capacity: int):
        self.service = QueueService(make_table(table_kind, capacity))
        self.table_kind, self.capacity = table_kind, capacity

    def __repr__(self) -> str:
        # Shown on the Ray dashboard's Actors page and as the prefix of this actor's log lines.
        return f"QueueActor(queue, {self.table_kind}, capacity {self.capacity})"

    async def insert(self, wrapped_ref: list, task_id: int) -> int:
        return await self.service.insert(wrapped_ref, task_id)

    async def sample(self, n: int, timeout: float | None = None) -> list | None:
        # References nested in a returned list reach the caller unresolved.
        return await self.service.sample(n, timeout)

    async def stats(self) -> dict[str, float]:
        return self.service.stats()
