"""`accord bench service` measures what it says: producers' acknowledged inserts reach the
consumer through every shard (a small synthetic unroll, two producers, two shards)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.service import measure, nbytes

pytestmark = pytest.mark.integration


def test_inserts_through_two_shards_reach_the_consumer(local_ray):
    unroll = {"frames": np.zeros((21, 2, 8, 8), dtype=np.uint8),
              "stack_start": np.ones((21, 2), dtype=np.int8),
              "heads": np.zeros((0, 3, 8, 8), dtype=np.uint8),
              "actions": np.zeros((20, 2), dtype=np.int64), "rewards": np.zeros((20, 2), dtype=np.float32),
              "terminated": np.zeros((20, 2), dtype=bool), "truncated": np.zeros((20, 2), dtype=bool),
              "behaviour_logits": np.zeros((20, 2, 4), dtype=np.float32),
              "task_id": np.zeros(2, dtype=np.int64), "version": 0, "episodes": np.zeros((0, 4))}
    seconds = 3.0
    r = measure(unroll, producers=2, shards=2, seconds=seconds, per_insert=2,
                capacity_per_shard=16, unrolls_per_batch=2)
    assert r["inserts/s"] > 0 and r["calls/s"] == pytest.approx(r["inserts/s"] / 2)
    assert r["MB/s"] == pytest.approx(r["inserts/s"] * nbytes(unroll) / 1e6)
    # what was drained had been inserted; what stays queued is at most the shards' capacity
    assert 0 < r["drained/s"] * seconds <= r["inserts/s"] * seconds + 2 * 16
    assert 0.0 <= r["wait"] <= 1.0
