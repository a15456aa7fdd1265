"""Tables: what the queue/replay service stores and how it hands items out.

A table holds opaque items (here: references to unrolls in Ray's object store) and knows
nothing of Ray. `FifoTable` is the on-policy queue of IMPALA: bounded, first in first out, each
item consumed once. Other storage backends of opaque items implement the same `Table` protocol;
the replay table of off-policy training (replay/replay_table.py) follows its shape but holds
the transitions' arrays themselves and samples them per task.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Protocol


class Table(Protocol):
    capacity: int

    def can_insert(self) -> bool:
        """False while the table is full; the service makes inserters wait (back-pressure)."""

    def insert(self, item: Any, task_id: int) -> None: ...

    def can_sample(self, n: int) -> bool: ...

    def sample(self, n: int) -> list[Any]:
        """n items; a FIFO table removes them, a replay table keeps them."""

    def __len__(self) -> int: ...


class FifoTable:
    """Bounded FIFO queue: insert at the tail, take from the head, each item once."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[tuple[Any, int]] = deque()

    def can_insert(self) -> bool:
        return len(self._items) < self.capacity

    def insert(self, item: Any, task_id: int) -> None:
        if not self.can_insert():
            raise OverflowError("FifoTable is full; wait for can_insert()")
        self._items.append((item, task_id))

    def can_sample(self, n: int) -> bool:
        return len(self._items) >= n

    def sample(self, n: int) -> list[Any]:
        if not self.can_sample(n):
            raise LookupError(f"FifoTable holds {len(self._items)} items, {n} requested")
        return [self._items.popleft()[0] for _ in range(n)]

    def __len__(self) -> int:
        return len(self._items)


def make_table(kind: str, capacity: int) -> Table:
    if kind == "fifo":
        return FifoTable(capacity)
    raise ValueError(f"unknown table kind {kind!r}")
