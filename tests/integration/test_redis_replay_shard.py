"""A replay shard on Redis outlives its actor: real Ray on loopback and a real redis-server.

Transitions stream into a `ReplayActor` while a learner-side sampler draws from it; both
processes are SIGKILLed mid-stream. A new shard on the same Redis and namespace must hold at
least 99.9% of the rows the dead one acknowledged.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import ray

from envs import EnvSpec
from replay.redis_server import start_redis_server
from replay.replay_actor import ReplayActor
from replay.sharding import start_replay_shards

pytestmark = pytest.mark.integration

TASKS = [0, 1]
CHUNK = 32  # rows per insert, split over the two tasks
SPEC = EnvSpec(obs_shape=(3,), obs_dtype=np.float32, action_dim=1)


def chunk(first: int) -> dict:
    seq = np.arange(first, first + CHUNK)
    return {"obs": np.repeat(seq[:, None], 3, 1).astype(np.float32),
            "next_obs": np.repeat(seq[:, None], 3, 1).astype(np.float32),
            "action": seq[:, None].astype(np.float32), "reward": seq.astype(np.float32),
            "terminated": np.zeros(CHUNK, bool), "truncated": np.zeros(CHUNK, bool),
            "version": seq.astype(np.int64), "task_id": seq % 2,
            "episodes": np.zeros((0, 4))}


def shard(url: str, name: str):
    # No rate limit: the stream runs as fast as the shard acknowledges.
    return ReplayActor.options(name=name).remote(0, TASKS, SPEC, 1_000_000, 8, None, 0.0, CHUNK, 16,
                                                 0, url, "accord:itest-redis:replay")


@ray.remote(num_cpus=0)
class Sampler:
    """The learner's side: samples from the shard in a loop until it is killed."""

    def __init__(self, shard_name: str):
        self.shard = ray.get_actor(shard_name)
        self.samples = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                if ray.get(self.shard.sample.remote(8, 0.5)) is not None:
                    self.samples += 1
            except Exception:
                return

    def state(self) -> tuple[int, int]:
        return os.getpid(), self.samples


@pytest.fixture
def server(tmp_path):
    server = start_redis_server(tmp_path / "redis")
    yield server
    server.stop()


def test_a_new_shard_holds_what_a_sigkilled_shard_acknowledged(local_ray, server):
    first = shard(server.url, "itest-redis-shard-a")
    sampler = Sampler.remote("itest-redis-shard-a")
    acked = [0]
    stopped = threading.Event()

    def stream():
        n = 0
        while not stopped.is_set():
            try:
                ray.get(first.insert.remote(chunk(n)))
            except Exception:  # the shard died under us: this insert was never acknowledged
                return
            n += CHUNK
            acked[0] = n

    inserter = threading.Thread(target=stream)
    inserter.start()
    deadline = time.monotonic() + 60
    while ray.get(sampler.state.remote())[1] < 5 or acked[0] < 2000:
        assert time.monotonic() < deadline, f"stream too slow: {acked[0]} rows acknowledged"
        time.sleep(0.1)
    shard_pid, sampler_pid = ray.get(first.pid.remote()), ray.get(sampler.state.remote())[0]
    os.kill(sampler_pid, signal.SIGKILL)
    os.kill(shard_pid, signal.SIGKILL)
    inserter.join(timeout=60)
    stopped.set()
    assert not inserter.is_alive()

    second = shard(server.url, "itest-redis-shard-b")
    stats = ray.get(second.stats.remote())
    back = stats["replay/restored"]
    print(f"\nshard SIGKILL: {acked[0]} rows acknowledged, {back:.0f} back in the new shard "
          f"({back / acked[0]:.2%})")
    assert back >= 0.999 * acked[0]
    assert stats["replay/size"] == back
    # The new shard serves samples at once: the restored rows exceed learning_starts.
    batch = ray.get(second.sample.remote(8, 5.0))
    assert batch is not None and batch["obs"].shape == (2, 8, 3)
    ray.kill(second)


def test_start_replay_shards_with_a_url_writes_the_run_s_namespace(local_ray, server):
    from accord.config import config_from_dict
    from replay.redis_table import redis_client

    cfg = config_from_dict({"env": {"kind": "gym", "tasks": ["Pendulum-v1"],
                                    "envs_per_actor": 1},
                            "learner": {"algorithm": "sac", "sac": {"batch_per_task": 8}},
                            "actors": {"num_actors": 1, "unroll_length": 4},
                            "replay": {"backend": "redis", "learning_starts": 4, "capacity_per_task": 100}})
    (handle,) = start_replay_shards(cfg, SPEC, "itest-place", server.url)
    rows = chunk(0)
    rows = {k: v[:4] for k, v in rows.items() if k != "episodes"} | {"task_id": np.zeros(4, np.int64)}
    ray.get(handle.insert.remote(rows))
    client = redis_client(server.url)
    assert client.hget("accord:itest-place:replay:task:0:meta", "size") == b"4"
    ray.kill(handle)
