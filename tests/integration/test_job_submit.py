"""A Ray head started with `ray start --head` on 127.0.0.1 with token auth and no GPU resource
(whatever this machine has); `accord train configs/smoke.yaml` submitted through Ray's job
submission API with the repo as working dir, and joined directly with `--address`."""
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("head-home")
    token = secrets.token_hex(32)
    # Ray's socket paths must stay short, so its temp dir is not tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
    port, dashboard_port = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path),
           # as deploy/cluster.yaml does: time for the checkpoint between SIGTERM and SIGKILL
           "RAY_JOB_STOP_WAIT_TIME_S": "60"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=4",
         "--num-gpus=0",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        yield address, token, f"127.0.0.1:{port}"
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _client(address: str, token: str):
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 90
    while True:  # the dashboard comes up a few seconds after the head
        try:
            return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _submit(client, runs: Path, *overrides: str) -> str:
    sets = " ".join(f"--set {o}" for o in overrides)
    return client.submit_job(
        entrypoint=f"accord train configs/smoke.yaml --set run.root={runs} {sets}",
        runtime_env={"working_dir": str(REPO), "excludes": [".venv", "runs", ".git", ".hypothesis"]},
    )


def _wait_done(client, job_id: str, timeout: float = 300):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job did not finish in {timeout} s"
        time.sleep(2)
        status = client.get_job_status(job_id)
    return status


def test_smoke_job_submitted_through_ray_jobs_api_succeeds(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    address, token, _ = ray_head
    client = _client(address, token)
    runs = tmp_path / "runs"
    job_id = _submit(client, runs)
    status = _wait_done(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    (run_dir,) = runs.iterdir()
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "metrics.csv").read_text().count("\n") >= 2
    assert list((run_dir / "checkpoints").glob("ckpt_*.pt"))
    assert "finished" in logs


def test_ray_job_stop_checkpoints_before_the_job_ends(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    address, token, _ = ray_head
    client = _client(address, token)
    runs = tmp_path / "runs"
    job_id = _submit(client, runs, "run.total_frames=100000000", "run.log_every=1",
                     "run.checkpoint_every=100000")
    def rows() -> int:
        found = list(runs.glob("*/metrics.csv"))
        return len(found[0].read_text().splitlines()) - 1 if found else 0

    deadline = time.monotonic() + 240
    while rows() < 2:  # training has started: a few metric rows are written
        status = client.get_job_status(job_id)
        assert status in {JobStatus.PENDING, JobStatus.RUNNING}, client.get_job_logs(job_id)[-3000:]
        assert time.monotonic() < deadline, "no metrics within 240 s"
        time.sleep(1)
    client.stop_job(job_id)
    assert _wait_done(client, job_id, timeout=120) == JobStatus.STOPPED
    logs = client.get_job_logs(job_id)
    assert "interrupted by SIGTERM" in logs, logs[-3000:]
    (run_dir,) = runs.iterdir()
    assert list((run_dir / "checkpoints").glob("ckpt_*.pt")), logs[-3000:]


def test_sighup_to_a_submitted_driver_checkpoints_and_the_job_succeeds(ray_head, tmp_path):
    import json
    import signal

    from ray.job_submission import JobStatus

    address, token, _ = ray_head
    client = _client(address, token)
    runs = tmp_path / "runs"
    job_id = _submit(client, runs, "run.total_frames=100000000", "run.log_every=1",
                     "run.checkpoint_every=100000")
    deadline = time.monotonic() + 240
    while not list(runs.glob("*/metrics.csv")) or len(next(runs.glob("*/metrics.csv")).read_text().splitlines()) < 3:
        assert client.get_job_status(job_id) in {JobStatus.PENDING, JobStatus.RUNNING}, \
            client.get_job_logs(job_id)[-3000:]
        assert time.monotonic() < deadline, "no metrics within 240 s"
        time.sleep(1)
    (run_dir,) = runs.iterdir()
    driver = json.loads((run_dir / "status.json").read_text())["pid"]  # the entrypoint's process
    os.kill(driver, signal.SIGHUP)
    assert _wait_done(client, job_id, timeout=120) == JobStatus.SUCCEEDED  # exit code 0
    logs = client.get_job_logs(job_id)
    assert "interrupted by SIGHUP" in logs and f"accord train --resume {run_dir}" in logs, logs[-3000:]
    assert list((run_dir / "checkpoints").glob("ckpt_*.pt"))
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["state"], status["exit_code"]) == ("interrupted", 0)


def test_cuda_learner_on_a_cluster_without_gpu_is_one_line_before_any_actor(ray_head, tmp_path):
    """The check reads the joined cluster's resources, not this machine's: the head offers no
    GPU even where this machine has one."""
    from ray.job_submission import JobStatus

    address, token, _ = ray_head
    client = _client(address, token)
    runs = tmp_path / "runs"
    job_id = _submit(client, runs, "learner.device=cuda")
    assert _wait_done(client, job_id, timeout=180) == JobStatus.FAILED
    assert "exit code 2" in client.get_job_info(job_id).message
    logs = client.get_job_logs(job_id)
    assert "Traceback" not in logs, logs[-3000:]
    # Ray logs its own lines while connecting; accord's is the last and the only error.
    lines = [ln for ln in logs.splitlines() if ln.strip()]
    assert lines[-1].startswith("config error: learner.device: 'cuda' but the Ray cluster has no "
                                "GPU resource"), logs[-3000:]
    assert sum("error" in ln.lower() for ln in lines) == 1, logs[-3000:]
    assert list(runs.iterdir()) == []  # the run directory was removed, nothing was written
