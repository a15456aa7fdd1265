"""A producer outside Ray feeds a running SAC run over gRPC: the real CLI with replay.grpc.port set
(an embedded Ray on loopback, two PointGoal tasks, no rollout actors), and
examples/grpc_producer.py as its own process stepping gymnasium envs and streaming their
transitions; then SIGINT ends the run.

With no rollout actor, every row of the table came over gRPC: the run's own metric rows must show
exactly the acknowledged rows stored for each task (the ingestion counters, the replay sizes and
the frames the learner counted) and the learner updating on them; the token file must be
readable by its owner only."""
from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.training_runs import cli_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ACCORD = str(Path(sys.executable).parent / "accord")
TASKS = ["PointGoal-NE-v0", "PointGoal-SW-v0"]
STEPS, ENVS = 100, 2  # rows per task: 200


def _env() -> dict:
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    env.pop("ACCORD_INGEST_TOKEN", None)  # the run generates its own
    return env


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    return list(csv.DictReader(open(path))) if path.exists() else []


def _wait_for(predicate, timeout: float, what: str, driver: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if driver.poll() is not None:
            pytest.fail(f"the run ended (code {driver.returncode}) before {what}:\n{driver.stdout.read()}")
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout:.0f} s")


def test_a_producer_outside_ray_feeds_two_tasks_into_a_running_sac_run(tmp_path):
    sets = ["replay.grpc.port=0", "actors.num_actors=0", f"env.tasks=[{','.join(TASKS)}]",
            f"run.root={tmp_path}", "run.total_frames=100000000", "run.log_every=1",
            "run.eval_every=0", "run.progress=false", "run.dashboard=false", "learner.sac.hidden=[32,32]",
            "learner.sac.batch_per_task=16", "replay.samples_per_insert=4", "replay.learning_starts=100"]
    driver = subprocess.Popen([ACCORD, "train", "configs/point_goal_sac.yaml",
                               *[a for s in sets for a in ("--set", s)]],
                              cwd=REPO, env=_env(), text=True, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        address = _wait_for(lambda: next(tmp_path.glob("*/ingest_address"), None), 120,
                            "ingestion server", driver)
        run_dir = address.parent
        assert stat.S_IMODE((run_dir / "ingest_token").stat().st_mode) == 0o600
        producer = subprocess.run(
            [sys.executable, "examples/grpc_producer.py", "--run-dir", str(run_dir), "--steps", str(STEPS),
             "--envs", str(ENVS), "--chunk-steps", "20"],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert producer.returncode == 0, producer.stderr
        acked = json.loads(producer.stdout.strip().splitlines()[-1])["acked"]
        assert acked == {t: STEPS * ENVS for t in TASKS}
        total = sum(acked.values())
        # A metric row written after the last ack whose learner has updated on what it holds.
        _wait_for(lambda: any(float(r["ingest/rows"]) == total and float(r["updates"]) > 0
                              for r in _rows(run_dir)), 60,
                  "metric row with every acknowledged row and updates", driver)
        os.killpg(driver.pid, signal.SIGINT)
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, out
    assert "gRPC ingestion on 127.0.0.1:" in out and "ingest_token" in out
    last = _rows(run_dir)[-1]
    for task_id, name in enumerate(TASKS):
        assert float(last[f"ingest/rows/{name}"]) == acked[name]
        assert float(last[f"replay/size/{task_id}"]) == acked[name]
    assert float(last["ingest/rejected"]) == 0
    assert float(last["updates"]) > 0 and float(last["replay/sampled"]) > 0
    # The learner's frames are the table's inserts, all of them the producer's rows.
    assert float(last["frames"]) == total and float(last["replay/inserted"]) == total
