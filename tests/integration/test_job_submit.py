"""A Ray head started with `ray start --head` on 127.0.0.1 with token auth; `accord train
configs/smoke.yaml` submitted through Ray's job submission API with the repo as working dir."""
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


@pytest.fixture
def ray_head(tmp_path):
    token = secrets.token_hex(32)
    # Ray's socket paths must stay short, so its temp dir is not tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
    port, dashboard_port = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=4",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        yield address, token
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


def test_smoke_job_submitted_through_ray_jobs_api_succeeds(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    address, token = ray_head
    client = _client(address, token)
    runs = tmp_path / "runs"
    job_id = client.submit_job(
        entrypoint=f"accord train configs/smoke.yaml --set run.root={runs}",
        runtime_env={"working_dir": str(REPO), "excludes": [".venv", "runs", ".git", ".hypothesis"]},
    )
    deadline = time.monotonic() + 300
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "job did not finish in 300 s"
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    (run_dir,) = runs.iterdir()
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "metrics.csv").read_text().count("\n") >= 2
    assert list((run_dir / "checkpoints").glob("ckpt_*.pt"))
    assert "finished" in logs
