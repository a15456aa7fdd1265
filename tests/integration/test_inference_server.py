"""The inference server on real Ray (127.0.0.1): it batches the concurrent steps of its rollout
actors into one forward and acts as local inference would, fetches each published version
once for all of them; and in a real training run through the CLI, a server killed mid-run is
restarted by Ray, counted, and the run ends on its budget with no rollout actor lost."""
from __future__ import annotations

import csv
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import ray

from accord.config import config_from_dict
from actors.inference_server import start_inference_servers
from actors.policy import policy_network
from actors.remote import ServerPolicy
from actors.rollout import RolloutWorker
from envs import describe
from learner.broadcast import WeightStore
from tests.support.scripted_env import TASK
from tests.support.training_runs import cli_env
from tests.support.weights import random_weights

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T, M = 6, 4


def _wait_for(predicate, what: str, timeout: float = 120.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(interval)
    return value


def test_concurrent_steps_run_as_one_batch_and_act_as_local_inference(local_ray):
    cfg = config_from_dict({
        "env": {"kind": "gym", "tasks": [TASK], "envs_per_actor": M},
        # A batch waits for both actors' steps (it never needs the wait: both always ask).
        "actors": {"num_actors": 2, "unroll_length": T, "inference": "server",
                   "inference_device": "cpu", "inference_max_wait_ms": 600_000},
        "learner": {"model": "mlp", "batch_size": M},
        "run": {"seed": 1},
    })
    spec = describe("gym", TASK)
    run = f"inference-{time.time_ns()}"
    store = WeightStore.options(name=f"{run}:weights").remote()
    first, second = (random_weights(policy_network(cfg, spec), s, scale=0.05) for s in (1, 2))
    ray.get(store.publish.remote(4, [ray.put(first)]))
    (server,) = start_inference_servers(cfg, spec, [f"{run}:inference"], f"{run}:weights", "cpu", 0)
    try:
        ray.get(server.ready.remote(), timeout=120)
        served = [RolloutWorker(cfg, i, spec, infer=ServerPolicy(server)) for i in range(2)]
        local = [RolloutWorker(cfg, i, spec) for i in range(2)]
        for worker in local:
            worker.set_weights(4, first)
        with ThreadPoolExecutor(2) as pool:  # both actors step at once, as in a fleet
            unrolls = list(pool.map(lambda w: [w.unroll() for _ in range(2)], served))
            for worker, theirs in zip(local, unrolls):
                for u_local, u_served in zip([worker.unroll() for _ in range(2)], theirs):
                    np.testing.assert_array_equal(u_local["actions"], u_served["actions"])
                    np.testing.assert_allclose(u_local["behaviour_logits"], u_served["behaviour_logits"],
                                               rtol=1e-6, atol=1e-6)
                    np.testing.assert_array_equal(u_local["obs"], u_served["obs"])
                    assert u_served["version"] == 4
            stats = ray.get(server.stats.remote())
            assert stats["requests"] == 2 * 2 * T
            assert stats["batches"] == 2 * T and stats["largest_batch"] == 2  # each held both steps
            assert stats["weight_fetches"] == 1

            # A new version, named in the steps (as insert replies name it to the actors), is
            # fetched by the server once for both; the actors fetch nothing.
            ray.get(store.publish.remote(5, [ray.put(second)]))
            for worker in served:
                worker.infer.newest_version = 5
            newer = list(pool.map(lambda w: [w.unroll() for _ in range(2)], served))
        assert all(u["version"] == 5 for us in newer for u in us)
        assert ray.get(server.stats.remote())["weight_fetches"] == 2
        assert all(w.model is None for w in served)
    finally:
        ray.kill(server, no_restart=True)
        ray.kill(store, no_restart=True)


def _named_actor(prefix: str, suffix: str):
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(prefix) and entry["name"].endswith(suffix):
            return ray.get_actor(entry["name"], namespace=entry["namespace"])
    return None


def _stats_or_none(handle) -> dict | None:
    try:
        return ray.get(handle.stats.remote(), timeout=10)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


def test_a_killed_inference_server_is_restarted_and_counted_and_the_run_ends_on_its_budget(
        local_ray, tmp_path):
    total_frames = 3200  # 10 updates of 2 unrolls x 20 steps x 8 envs: the kill comes in the first
    argv = ["train", "configs/cartpole.yaml", f"--address={ray.get_runtime_context().gcs_address}",
            "--set", "actors.inference=server", "--set", "actors.inference_device=cpu",
            "--set", f"run.total_frames={total_frames}", "--set", f"run.root={tmp_path}",
            "--set", "run.name=inference-kill", "--set", "run.log_every=1", "--set", "run.progress=false"]
    env = cli_env()
    driver = subprocess.Popen([sys.executable, "-m", "accord.cli", *argv], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        server = _wait_for(lambda: _named_actor("accord:inference-kill", ":inference"), "inference server")
        _wait_for(lambda: (s := _stats_or_none(server)) and s["batches"] >= 1, "a first batch")
        rollout = _named_actor("accord:inference-kill", ":rollout:0")
        ray.kill(server, no_restart=False)  # Ray restarts it (actors.inference_max_restarts: 3)
        # The rollout actors act through the server: they fetch no weights themselves (asked
        # while they wait for the restarted server, long before the run can end).
        assert ray.get(rollout.stats.remote(), timeout=60)["weight_fetches"] == 0
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, output
    assert "finished:" in output, output
    (run_dir,) = tmp_path.iterdir()
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    last = rows[-1]
    assert float(last["inference/restarts"]) == 1.0, output
    assert float(last["actors/restarts"]) == 0.0, output
    assert float(last["frames"]) >= total_frames
