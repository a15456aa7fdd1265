"""More rollout actors than cores: 16 actors of one CartPole env each against the real IMPALA
learner, on a real Ray head at 127.0.0.1 with a CPU slot per actor (as `accord train` gives an
embedded Ray), trained by the driver's own `train`. Every learner chunk must come back within
its seconds plus its own slowest update (the learner counts the chunks that did not:
`late_chunks`), and the run must end on `run.max_seconds`, not hang. The assertions are on
what the run counted and recorded, never on how long anything took.

Starting 16 actor processes (each imports torch) takes about 50 CPU-seconds, which Ray spends
on all of them at once: on 2 otherwise idle cores the fleet is up within about 30 s of the run's
45 and the learner trains for the rest; on a machine loaded many times over (load average 30)
no actor answered within the run. The chunks must be on time either way, so how many updates
the learner made is not asserted."""
from __future__ import annotations

import csv
import json
import os

import pytest
import ray

from accord.config import load_config
from accord.console import Console
from accord.driver import train
from accord.run_dir import new_run_dir
from tests.support.local_ray import init_local_ray

pytestmark = pytest.mark.integration

ACTORS = 16
MAX_SECONDS = 45
CHUNK_SECONDS = 1.0  # run.log_every: the driver's chunks last min(1, log_every) seconds


@pytest.fixture
def crowded_ray():
    # No dashboard: its processes would take CPU the 16 actors need to start.
    init_local_ray(num_cpus=ACTORS + 1, include_dashboard=False,
                   _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.timeout(600)  # a hang guard only: the run must stop on its own max_seconds
def test_sixteen_actors_on_few_cores_every_chunk_on_time_and_the_run_ends_on_max_seconds(
        crowded_ray, tmp_path):
    assert (os.cpu_count() or 1) < ACTORS  # the point of the test: more actors than cores
    cfg = load_config("configs/cartpole.yaml", [
        f"actors.num_actors={ACTORS}", "env.envs_per_actor=1", "learner.batch_size=4",
        "queue.capacity=24", f"run.max_seconds={MAX_SECONDS}", "run.total_frames=100000000",
        f"run.log_every={CHUNK_SECONDS}", "run.progress=false", f"run.root={tmp_path}"])
    run_dir = new_run_dir(cfg)
    result = train(cfg, run_dir, console=Console(enabled=False))
    assert result.exit_code == 0 and result.reason == "time limit", result.reason
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["reason"] == "time limit", status
    # The driver heard from the learner about once per chunk's seconds, and none ran late.
    assert status["learner_chunks"] >= MAX_SECONDS / (4 * CHUNK_SECONDS), status
    assert status["late_chunks"] == 0, status
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert rows and max(float(r["learner/late_chunks"]) for r in rows) == 0.0
    # The weights the actors start from were published (and every version since).
    assert float(rows[-1]["weights/publish_bytes"]) > 0
    # The run joined the Ray this test started (its raylet a child of this process, as the
    # run's own processes are): the watchdog left it running, for this test to shut down.
    assert ray.get(ray.put("still here"), timeout=60) == "still here"
    assert [node["Alive"] for node in ray.nodes()] == [True]
