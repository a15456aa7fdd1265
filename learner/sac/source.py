"""SAC's batches: task-balanced samples from the replay shards, stacked in task order.

Each shard (replay/replay_service.py) holds whole tasks, k -> k % S, and answers a sample with
`batch_per_task` rows of each of its tasks ([K_s, n, ...]). One batch is one sample from every
shard; the parts are placed at their tasks' indices, so task k's rows sit at index k of
[K, n, ...] as the per-task loss terms expect (papers 003, 004: equal rows per task).

`cfg.replay.prefetch` requests stay in flight, so the next batch is on its way while the learner
updates. A request whose shard timed out (the table not yet at `learning_starts`, or the rate
limiter holding the learner back) yields no batch; the rows the other shards handed out for it
are counted in `lost`, and their episode statistics are kept for the next batch, never dropped.
"""
from __future__ import annotations

from collections import deque

import numpy as np

# Per-row fields of a batch, [K, n, ...] after the merge.
ROW_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


class ReplaySource:
    """`BatchSource` (learner/algorithm.py) over the replay shards, in shard order."""

    def __init__(self, shards: list, cfg, timeout: float = 1.0):
        if not shards:
            raise ValueError("ReplaySource needs at least one replay shard")
        self.shards = list(shards)
        self.num_tasks = len(cfg.env.tasks)
        self.batch_per_task = cfg.learner.sac.batch_per_task
        self.prefetch = cfg.replay.prefetch
        self.timeout = timeout
        self.lost = 0  # transitions handed out by a shard for a batch another shard timed out on
        self.timeouts = 0  # requests that yielded no batch
        self.inserted = 0  # transitions inserted into all shards, as of the newest reply
        self._in_flight: deque[list] = deque()
        self._episodes: list[np.ndarray] = []  # from requests that yielded no batch

    def _top_up(self) -> None:
        while len(self._in_flight) < self.prefetch:
            self._in_flight.append(
                [shard.sample.remote(self.batch_per_task, self.timeout) for shard in self.shards])

    def request(self) -> list:
        """The per-shard sample references of the oldest request in flight."""
        self._top_up()
        oldest = self._in_flight.popleft()
        self._top_up()
        return oldest

    def receive(self, replies: list, timeout: float | None = None) -> dict | None:
        """Merge one request's shard replies into a batch; None if any shard timed out. The
        replies hold the rows themselves, so nothing is left to wait for (`timeout` unused)."""
        if len(replies) != len(self.shards):
            raise ValueError(f"ReplaySource: {len(replies)} replies for {len(self.shards)} shards")
        parts = [r for r in replies if r is not None]
        self._episodes.extend(part["episodes"] for part in parts)
        if len(parts) < len(replies):
            self.timeouts += 1
            self.lost += sum(part["reward"].size for part in parts)
            return None
        return self._merge(parts)

    def _merge(self, parts: list[dict]) -> dict:
        task_index = np.concatenate([part["task_ids"] for part in parts])
        if sorted(task_index.tolist()) != list(range(self.num_tasks)):
            raise ValueError(f"replay shards returned tasks {sorted(task_index.tolist())}, "
                             f"expected 0..{self.num_tasks - 1} once each")
        order = np.argsort(task_index)  # shard-major rows -> task order
        batch = {k: np.concatenate([part[k] for part in parts])[order] for k in ROW_FIELDS}
        batch["versions"] = np.concatenate([part["version"] for part in parts])[order].reshape(-1)
        batch["episodes"] = np.concatenate(self._episodes) if self._episodes else np.zeros((0, 4))
        self._episodes = []
        # Waiting samples of two requests in flight may be served out of order; the count of
        # inserts (the learner's env frames) must not step back.
        self.inserted = max(self.inserted, int(sum(part["inserted"] for part in parts)))
        batch["inserted"] = self.inserted
        return batch
