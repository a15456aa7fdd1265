"""IMPALA's batches: whole unrolls taken once from the FIFO queue, fetched from the object store
and concatenated along the batch axis."""
from __future__ import annotations

import numpy as np
import ray

from envs.frame_stack import collate_compact


def collate(unrolls: list[dict]) -> dict:
    """Concatenate unrolls along the batch axis (axis 1 of time-major arrays). Compact frames
    become one frame pool and the index that restacks it (`obs_pool`, `obs_index`)."""
    compact = "frames" in unrolls[0]
    time_major = (*(() if compact else ("obs",)), "actions", "rewards", "terminated", "truncated", "behaviour_logits",
                  *(k for k in unrolls[0] if k.startswith("teacher_probs/")))
    batch = {k: np.concatenate([u[k] for u in unrolls], axis=1) for k in time_major}
    if compact:
        batch["obs_pool"], batch["obs_index"] = collate_compact(unrolls)
    batch["task_id"] = np.concatenate([u["task_id"] for u in unrolls])
    batch["versions"] = np.asarray([u["version"] for u in unrolls], dtype=np.int64)
    batch["episodes"] = np.concatenate([u["episodes"] for u in unrolls])
    return batch


class UnrollSource:
    """`n` unroll references per request from the queue's shards, in turn."""

    def __init__(self, shards: list, unrolls_per_batch: int, timeout: float = 1.0):
        self.shards = list(shards)
        self.n = unrolls_per_batch
        self.timeout = timeout
        self.lost = 0
        self._next = 0

    def request(self):
        shard = self.shards[self._next % len(self.shards)]
        self._next += 1
        return shard.sample.remote(self.n, self.timeout)

    def receive(self, refs, timeout: float | None = None) -> dict | None:
        """The batch of the unrolls `refs` names; `TimeoutError` if they are not all in this
        node's object store within `timeout` seconds (the same `refs` can be received again)."""
        if refs is None:  # the queue timed out: the actors have not filled a batch yet
            return None
        unrolls = self._fetch(refs, timeout)
        return collate(unrolls) if unrolls else None

    def _fetch(self, refs: list, timeout: float | None) -> list[dict]:
        # Wait for all of them first, bounded: an unroll whose owner is starved of CPU, or an
        # object store under pressure, must not hold the learner past its chunk. A lost
        # unroll counts as ready (its error is), so the fallback below never waits.
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=True)
        if len(ready) < len(refs):
            raise ray.exceptions.GetTimeoutError(
                f"{len(refs) - len(ready)} of {len(refs)} unrolls not here within {timeout} s")
        try:
            return ray.get(refs)
        except ray.exceptions.ObjectLostError:
            kept = []
            for ref in refs:  # keep what survived; count what did not
                try:
                    kept.append(ray.get(ref))
                except ray.exceptions.ObjectLostError:
                    self.lost += 1
            return kept
