"""The replay table of off-policy training (SAC): transitions kept per task, sampled balanced.

Multi-task SAC as papers 003 (PCGrad) and 004 run it draws the same number of transitions from
every task's own buffer for each update, so a task that steps faster does not crowd the batch
and each task's loss term sees `batch_per_task` rows. Hence one ring buffer per task (the oldest
transition is overwritten once `capacity_per_task` is reached) and uniform sampling, with
replacement, over each task's filled part; batches are task-major, task k's rows at index k.

Unlike `FifoTable` (replay/tables.py), which holds opaque references, this table holds the
arrays themselves: a transition is tens of floats, too small to pay one object-store entry each.
A buffer is allocated on its task's first insert, so a shard pays only for the tasks it sees.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Fields of a transition stored per row; `task_id` routes rows and `episodes` is passed along.
FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "version")


class _Ring:
    """One task's transitions in fixed arrays; `pos` is the next row written."""

    def __init__(self, capacity: int, shapes: dict[str, tuple], dtypes: dict[str, np.dtype]):
        self.capacity = capacity
        self.arrays = {k: np.zeros((capacity, *shapes[k]), dtype=dtypes[k]) for k in FIELDS}
        self.pos = 0
        self.size = 0

    def write(self, rows: dict[str, np.ndarray]) -> None:
        n = len(rows["reward"])
        if n >= self.capacity:  # only the newest `capacity` rows would survive the wrap anyway
            for k in FIELDS:
                self.arrays[k][:] = rows[k][n - self.capacity:]
            self.pos, self.size = 0, self.capacity
            return
        index = (self.pos + np.arange(n)) % self.capacity
        for k in FIELDS:
            self.arrays[k][index] = rows[k]
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)


class ReplayTable:
    """Per-task ring buffers over the tasks `task_ids` (a shard's share of the run's tasks)."""

    def __init__(self, task_ids: Sequence[int], capacity_per_task: int, obs_shape: tuple[int, ...],
                 obs_dtype, action_dim: int):
        if not task_ids:
            raise ValueError("ReplayTable needs at least one task id")
        if len(set(task_ids)) != len(task_ids):
            raise ValueError(f"ReplayTable: duplicate task ids in {list(task_ids)}")
        if capacity_per_task < 1:
            raise ValueError(f"replay.capacity_per_task must be >= 1, got {capacity_per_task}")
        if action_dim is None or action_dim < 1:
            raise ValueError(f"ReplayTable needs a continuous action space (action_dim >= 1), got {action_dim}")
        self.task_ids = sorted(int(t) for t in task_ids)
        self.capacity_per_task = capacity_per_task
        self.shapes = {"obs": tuple(obs_shape), "next_obs": tuple(obs_shape), "action": (action_dim,),
                       "reward": (), "terminated": (), "truncated": (), "version": ()}
        self.dtypes = {"obs": np.dtype(obs_dtype), "next_obs": np.dtype(obs_dtype),
                       "action": np.dtype(np.float32), "reward": np.dtype(np.float32),
                       "terminated": np.dtype(bool), "truncated": np.dtype(bool),
                       "version": np.dtype(np.int64)}
        self._rings: dict[int, _Ring] = {}

    def validate(self, chunk: dict) -> int:
        """Check a chunk's keys, shapes and task ids; returns its number of rows N."""
        missing = [k for k in (*FIELDS, "task_id") if k not in chunk]
        if missing:
            raise ValueError(f"transition chunk lacks {missing}")
        n = len(chunk["task_id"])
        for k in (*FIELDS, "task_id"):
            shape = np.shape(chunk[k])
            want = (n, *self.shapes.get(k, ()))
            if shape != want:
                raise ValueError(f"transition chunk: {k} has shape {shape}, expected {want}")
        unknown = np.setdiff1d(np.asarray(chunk["task_id"]), self.task_ids)
        if unknown.size:
            raise ValueError(f"transition chunk: task ids {unknown.tolist()} are not held by this "
                             f"table (it holds {self.task_ids})")
        return n

    def insert(self, chunk: dict) -> int:
        """Append a chunk's rows to their tasks' rings; returns the rows inserted."""
        n = self.validate(chunk)
        task_id = np.asarray(chunk["task_id"])
        for task in np.unique(task_id):
            rows = task_id == task
            ring = self._rings.get(int(task))
            if ring is None:
                ring = self._rings[int(task)] = _Ring(self.capacity_per_task, self.shapes, self.dtypes)
            ring.write({k: np.asarray(chunk[k])[rows] for k in FIELDS})
        return n

    def size(self, task: int) -> int:
        ring = self._rings.get(task)
        return 0 if ring is None else ring.size

    @property
    def capacity(self) -> int:
        return self.capacity_per_task * len(self.task_ids)

    def __len__(self) -> int:
        return sum(ring.size for ring in self._rings.values())

    def store_stats(self) -> dict[str, float]:
        """Metrics of where the rows are kept; a table in memory has none."""
        return {}

    def holds_at_least(self, n: int) -> bool:
        """Every task of the table holds n transitions (the minimum size before sampling)."""
        return all(self.size(t) >= n for t in self.task_ids)

    def sample(self, batch_per_task: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`batch_per_task` rows of every task, uniform with replacement over what it holds:
        each field [K, n, ...] with task `task_ids[k]` at index k, plus `task_ids` [K]."""
        if batch_per_task < 1:
            raise ValueError(f"batch_per_task must be >= 1, got {batch_per_task}")
        empty = [t for t in self.task_ids if self.size(t) == 0]
        if empty:
            raise LookupError(f"ReplayTable: tasks {empty} hold no transitions yet")
        picks = []
        for t in self.task_ids:
            ring = self._rings[t]
            index = rng.integers(0, ring.size, size=batch_per_task)
            picks.append({k: ring.arrays[k][index] for k in FIELDS})
        batch = {k: np.stack([p[k] for p in picks]) for k in FIELDS}
        batch["task_ids"] = np.asarray(self.task_ids, dtype=np.int64)
        return batch
