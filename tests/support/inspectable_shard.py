"""A replay shard as replay/replay_service.py builds it, in a Ray actor that can also hand back
its table's rows: the gRPC ingestion tests compare what was stored with what was acknowledged."""
from __future__ import annotations

import numpy as np
import ray

from envs.spec import EnvSpec
from replay.rate_limiter import SampleToInsertRatio
from replay.replay_service import ReplayService
from replay.replay_table import FIELDS, ReplayTable

SPEC = EnvSpec(obs_shape=(2,), obs_dtype=np.dtype(np.float32), action_dim=2)


@ray.remote(num_cpus=0, max_concurrency=100)
class InspectableShard:
    def __init__(self, task_ids, samples_per_insert=None):
        table = ReplayTable(task_ids, 100_000, SPEC.obs_shape, SPEC.obs_dtype, SPEC.action_dim)
        limiter = SampleToInsertRatio(samples_per_insert, 0.0, 16, 30)
        self.service = ReplayService(table, limiter, learning_starts=1)

    async def insert(self, chunk):
        return await self.service.insert(chunk)

    async def sample(self, batch_per_task):
        return await self.service.sample(batch_per_task, timeout=5)

    def stats(self):
        return self.service.stats()

    def rows(self):
        table = self.service.table
        return {t: {k: table._rings[t].arrays[k][:table.size(t)].copy() for k in FIELDS}
                for t in table.task_ids if table.size(t)}
