"""The queue service: a table behind an asyncio Ray actor.

Bulk arrays never pass through this actor: rollout actors `ray.put` an unroll and insert the
*reference* (wrapped in a list so Ray does not resolve it), the learner receives references and
fetches the arrays from the object store (zero-copy on one node). The service only orders,
bounds and counts.

Back-pressure: `insert` awaits while the table is full, so a fast actor fleet slows to the
learner's pace instead of growing memory; every insert that had to wait is counted.

Wake-ups: inserters and samplers wait on two conditions of one lock. A sample of n items wakes
at most n blocked inserters, one per freed slot, in the order they began to wait; an insert
wakes the samplers only (the learner: one or a few). Waking every waiter on every change
(`wake="all"`, kept for `accord bench service --wakeups`) makes each sample cost a predicate
check per blocked producer: with 200 actors blocked on a full queue, 200 checks to admit n of
them. `wakeups` counts the predicate checks of woken waiters.

Traffic: one call inserts a batch of references, and its reply carries the newest weights
version the learner published, so an actor asks the weight store only when there is something
new rather than once per unroll. The queue shards across several of these actors
(`queue.shards`): each rollout actor inserts into one, the learner draws from all in turn.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from replay.tables import Table, make_table


class QueueService:
    """Plain class (unit-testable under asyncio); `QueueActor` below is its Ray wrapper."""

    def __init__(self, table: Table, wake: str = "one"):
        if wake not in ("one", "all"):
            raise ValueError(f"wake must be 'one' (a waiter per freed slot) or 'all', got {wake!r}")
        self.table = table
        self.wake = wake
        lock = asyncio.Lock()
        self._space = asyncio.Condition(lock)   # inserters wait here for a free slot
        self._items = asyncio.Condition(lock)   # samplers wait here for enough items
        self.inserted = 0
        self.sampled = 0
        self.blocked_inserts = 0
        self.blocked_seconds = 0.0
        self.wakeups = 0
        self.inserted_per_task: dict[int, int] = {}
        self.weights_version = -1

    def _checked(self, predicate):
        """`predicate`, counting each check after the first (each is a wake-up)."""
        first = [True]

        def check() -> bool:
            if not first[0]:
                self.wakeups += 1
            first[0] = False
            return predicate()
        return check

    def set_weights_version(self, version: int) -> None:
        """The learner published `version`: the next insert replies tell the actors. The newest
        notice wins even when it is older: a restarted learner goes back to its checkpoint."""
        self.weights_version = version

    async def insert(self, wrapped_refs: list, task_ids: int | list[int]) -> dict[str, int]:
        """Insert items in order (one task id for all, or one each); each waits while the queue
        is full. Returns the depth after the last one and the newest weights version."""
        if isinstance(task_ids, int):
            task_ids = [task_ids] * len(wrapped_refs)
        if len(task_ids) != len(wrapped_refs):
            raise ValueError(f"queue insert: {len(wrapped_refs)} items but {len(task_ids)} task ids")
        async with self._space:
            for item, task_id in zip(wrapped_refs, task_ids):
                if not self.table.can_insert():
                    self.blocked_inserts += 1
                    start = time.monotonic()
                    await self._space.wait_for(self._checked(self.table.can_insert))
                    self.blocked_seconds += time.monotonic() - start
                self.table.insert(item, task_id)
                self.inserted += 1
                self.inserted_per_task[task_id] = self.inserted_per_task.get(task_id, 0) + 1
                self._items.notify_all()
                if self.wake == "all":
                    self._space.notify_all()
            return {"depth": len(self.table), "weights_version": self.weights_version}

    async def sample(self, n: int, timeout: float | None = None) -> list[Any] | None:
        """n items, waiting up to `timeout` seconds for them; None on timeout."""
        async with self._items:
            try:
                await asyncio.wait_for(
                    self._items.wait_for(self._checked(lambda: self.table.can_sample(n))), timeout)
            except asyncio.TimeoutError:
                return None
            items = self.table.sample(n)
            self.sampled += n
            if self.wake == "all":
                self._space.notify_all()
                self._items.notify_all()
            else:
                self._space.notify(len(items))   # one blocked inserter per freed slot
            return items

    def stats(self) -> dict[str, float]:
        return {
            "queue/depth": float(len(self.table)),
            "queue/capacity": float(self.table.capacity),
            "queue/inserted": float(self.inserted),
            "queue/sampled": float(self.sampled),
            "queue/blocked_inserts": float(self.blocked_inserts),
            "queue/blocked_seconds": self.blocked_seconds,
            "queue/wakeups": float(self.wakeups),
        }


@ray.remote(num_cpus=0, max_concurrency=1000)
class QueueActor:
    def __init__(self, table_kind: str, capacity: int):
        self.service = QueueService(make_table(table_kind, capacity))
        self.table_kind, self.capacity = table_kind, capacity

    def __repr__(self) -> str:
        # Shown on the Ray dashboard's Actors page and as the prefix of this actor's log lines.
        return f"QueueActor(queue, {self.table_kind}, capacity {self.capacity})"

    async def insert(self, wrapped_refs: list, task_ids: int | list[int]) -> dict[str, int]:
        # References nested in a list reach the service unresolved.
        return await self.service.insert(wrapped_refs, task_ids)

    async def set_weights_version(self, version: int) -> None:
        self.service.set_weights_version(version)

    async def sample(self, n: int, timeout: float | None = None) -> list | None:
        # References nested in a returned list reach the caller unresolved.
        return await self.service.sample(n, timeout)

    async def stats(self) -> dict[str, float]:
        return self.service.stats()
