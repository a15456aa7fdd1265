"""The sharded replay service on real Ray (loopback): producers insert chunks of 4 tasks through
`split_by_shard` into 2 named shards while a `ReplaySource` draws balanced batches, as the
learner actor does; every sampled row is a real inserted row with its fields aligned, and the
rate limiter keeps samples per insert within its buffer."""
from __future__ import annotations

import numpy as np
import ray

from envs.spec import EnvSpec
from learner.sac.source import ReplaySource
from replay.sharding import split_by_shard, start_replay_shards
from tests.unit.test_replay_sharding import sac_config
from tests.unit.transitions import ACTION_DIM, OBS_SHAPE, row_ids_checked, transition_chunk

NUM_TASKS, CHUNKS, ROWS_PER_TASK = 4, 40, 10  # rows per task and chunk: unroll 5 x 2 envs


def produced_rows(producer: int, chunk: int, tasks) -> np.ndarray:
    """Row ids of one chunk; r % NUM_TASKS is the row's task, so the rows name their task."""
    base = (producer * CHUNKS + chunk) * 1000
    return np.asarray([base + NUM_TASKS * j + t for t in tasks for j in range(ROWS_PER_TASK)])


@ray.remote(num_cpus=0)
def produce(run_id: str, producer: int, tasks: list[int], num_shards: int) -> int:
    shards = [ray.get_actor(f"accord:{run_id}:replay:{s}") for s in range(num_shards)]
    shard_inserts = 0
    for c in range(CHUNKS):
        rows = produced_rows(producer, c, tasks)
        episodes = [[t, producer * CHUNKS + c, 1, np.nan] for t in tasks]  # one ended per task
        chunk = transition_chunk(rows, rows % NUM_TASKS, episodes)
        # every shard's insert is sent before waiting on any (see replay/sharding.py)
        refs = [shards[s].insert.remote(part) for s, part in split_by_shard(chunk, num_shards).items()]
        shard_inserts += len(ray.get(refs))
    return shard_inserts


def test_sharded_replay_serves_balanced_real_rows_at_the_set_ratio(local_ray):
    cfg = sac_config(tasks=NUM_TASKS, shards=2, actors=NUM_TASKS, samples_per_insert=8.0, prefetch=2)
    spec = EnvSpec(obs_shape=OBS_SHAPE, obs_dtype=np.float32, action_dim=ACTION_DIM)
    shards = start_replay_shards(cfg, spec, run_id="itest")
    assert [ray.get_actor(f"accord:itest:replay:{s}") for s in (0, 1)]  # named, found by name
    producers = [produce.remote("itest", p, tasks, 2) for p, tasks in enumerate(([0, 1], [2, 3]))]
    source = ReplaySource(shards, cfg, timeout=1.0)
    batches = []
    pending = source.request()
    while ray.wait(producers, num_returns=len(producers), timeout=0)[1]:
        reply = ray.get(pending)  # as LearnerActor.train: fetch, ask for the next, then merge
        pending = source.request()
        batch = source.receive(reply)
        if batch is not None:
            batches.append(batch)
    assert ray.get(producers) == [2 * CHUNKS, 2 * CHUNKS]

    rows = {int(r): int(r) % NUM_TASKS for p, tasks in enumerate(([0, 1], [2, 3]))
            for c in range(CHUNKS) for r in produced_rows(p, c, tasks)}
    assert len(batches) > 10
    for batch in batches:
        assert batch["obs"].shape == (NUM_TASKS, 6, *OBS_SHAPE)
        assert batch["reward"].shape == (NUM_TASKS, 6) and batch["versions"].shape == (NUM_TASKS * 6,)
        row_ids_checked(batch, rows, range(NUM_TASKS))
    inserted = [b["inserted"] for b in batches]
    assert inserted == sorted(inserted) and inserted[-1] <= len(rows)
    episodes = np.concatenate([b["episodes"] for b in batches])
    keys = [(int(t), int(c)) for t, c, _, _ in episodes]
    assert len(keys) == len(set(keys))  # each ended episode is handed out once at most
    assert all(t in ([0, 1], [2, 3])[c // CHUNKS] for t, c in keys)

    stats = ray.get([s.stats.remote() for s in shards])
    for shard, st in enumerate(stats):
        assert st["replay/inserted"] == 2 * CHUNKS * ROWS_PER_TASK
        assert {k for k in st if k.startswith("replay/size/")} == {f"replay/size/{t}" for t in (shard, shard + 2)}
        assert st["replay/size"] == 2 * 50  # both rings full and wrapped
        # Reverb's bound: |inserted * SPI - sampled| within the buffer, (10 * 8 + 12) / 2 = 46
        assert abs(st["replay/rate_diff"]) <= 46.0
        # so the observed ratio is 8 within 46 over the (hundreds of) inserts since sampling began
        assert abs(st["replay/samples_per_insert"] - 8.0) < 0.5
        # 80 samples per 10-row insert: the learner sets the pace and the producers had to wait
        assert st["replay/blocked_inserts"] > 0
    for handle in shards:
        ray.kill(handle)
