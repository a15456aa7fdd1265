"""Rollout actors on real Breakout feed the learner through the queue service on real Ray."""
import time

import pytest
import ray

from accord.config import config_from_dict
from accord.driver import start_topology
from accord.loop import ActorHealth

pytestmark = pytest.mark.integration


def _breakout_config(**run):
    return config_from_dict({
        "env": {"kind": "atari", "tasks": ["breakout"], "envs_per_actor": 2},
        "actors": {"num_actors": 2, "unroll_length": 10, "max_restarts": 2},
        "queue": {"capacity": 4},
        "learner": {"model": "nature", "batch_size": 4, "publish_every": 1},
        "run": {"total_frames": 10**7, **run},
    })


def _wait_for(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def topology(local_ray, request):
    topo = start_topology(_breakout_config(), f"test-{request.node.name}-{time.time_ns()}")
    yield topo
    topo.stop()


def test_unrolls_reach_the_learner_and_weight_versions_advance(topology):
    # The actors started while the learner did; each began with its first publish (version 0).
    versions_before = [ray.get(a.stats.remote())["version"] for a in topology.actors]
    assert versions_before == [0, 0]
    chunk = ray.get(topology.learner.train.remote(max_updates=6, max_seconds=120))
    counters = chunk["counters"]
    assert counters["updates"] == 6
    # 6 updates x 2 unrolls x 10 steps x 2 envs x frameskip 4
    assert counters["frames"] == 6 * 2 * 10 * 2 * 4
    assert {"loss/main/pg", "loss/main/baseline", "loss/main/entropy"} <= set(chunk["metrics"])
    queue_stats = ray.get(topology.queue.stats.remote())
    assert queue_stats["queue/sampled"] >= 12 and queue_stats["queue/inserted"] >= 12
    # Both actors produced, and each adopts a newer published version at an unroll boundary.
    def advanced():
        stats = [ray.get(a.stats.remote()) for a in topology.actors]
        return all(s["unrolls"] > 0 and s["version"] > v for s, v in zip(stats, versions_before))
    ray.get(topology.learner.train.remote(max_updates=2, max_seconds=60))
    _wait_for(advanced, timeout=60)
    assert ray.get(topology.weight_store.current_version.remote()) == 8


def test_killed_rollout_actor_is_restarted_and_the_run_goes_on(topology):
    health = ActorHealth(topology.actors)
    ray.get(topology.learner.train.remote(max_updates=2, max_seconds=120))
    health.poll(timeout=30)
    assert health.restarts == 0 and len(health.incarnations) == 2

    ray.kill(topology.actors[0], no_restart=False)  # Ray restarts it (max_restarts=2)
    before = ray.get(topology.learner.counters.remote())["updates"]
    chunk = ray.get(topology.learner.train.remote(max_updates=6, max_seconds=180))
    assert chunk["counters"]["updates"] == before + 6

    def restarted():
        health.poll(timeout=10)
        return health.restarts == 1
    _wait_for(restarted, timeout=90)
    # The new incarnation resynced the newest weights and produces again.
    stats = ray.get(topology.actors[0].stats.remote())
    assert stats["version"] >= before
    _wait_for(lambda: ray.get(topology.actors[0].stats.remote())["unrolls"] > 0, timeout=60)
