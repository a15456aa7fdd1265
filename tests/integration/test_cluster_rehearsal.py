"""The user's path through deploy/cluster.yaml, rehearsed on this machine with real processes:
`deploy/rehearse.py up` (a head and two worker nodes from the config's node types, resources, file
mounts and setup scripts), two multi-task jobs submitted side by side with `ray job submit`
(MT10 with PCGrad-SAC; Breakout and Pong with IMPALA and cosine gating; one rollout actor each),
the dashboard's Jobs page in headless Chromium, Prometheus's frames/s per job, Ray's state API
for where each role runs, one worker node killed mid-run, `ray job stop` of each job in turn,
and `deploy/rehearse.py down`.

Budgets are frames and updates; every wait is on its condition, with a generous timeout.
Run alone with: pytest -m cluster
"""
from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.http import get_json

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
STARTUP_TIMEOUT = 420  # seconds; the two jobs start their torch, Ray and env processes on 2 shared cores
PAGE_TIMEOUT_MS = 120_000  # a page load or screenshot of the dashboard: a loaded head answers slowly
PLACEMENT = {"rollout": "worker", "learner": "head", "service": "head"}

JOBS = {
    "accord-mt10-pcgrad-sac": {
        "env": {"kind": "metaworld", "benchmark": "MT10", "envs_per_actor": 1},
        "actors": {"num_actors": 1, "unroll_length": 10},
        "replay": {"capacity_per_task": 2000, "learning_starts": 20, "samples_per_insert": 4},
        "learner": {"algorithm": "sac", "device": "cpu",
                    "combiner": {"name": "pcgrad", "options": {"seed": 0}},
                    "sac": {"hidden": [32, 32], "batch_per_task": 8}},
    },
    "accord-atari-cosine-impala": {
        "env": {"kind": "atari", "tasks": ["breakout", "pong"], "envs_per_actor": 2,
                "full_action_space": True},
        "actors": {"num_actors": 1, "unroll_length": 20},
        "queue": {"capacity": 8},
        "learner": {"model": "nature", "batch_size": 4, "device": "cpu",
                    "combiner": {"name": "cosine_gate"}},
    },
}


def _rehearse(*args: str, env: dict, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, str(REPO / "deploy" / "rehearse.py"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def cluster():
    """The rehearsal cluster, with the user's own home (token in ~/.ray/auth_token, as `ray up`
    expects) and the two jobs submitted through the `ray job submit` command."""
    # Its own directory, not pytest's: the cluster outlives any rotation of pytest's temp dirs.
    tmp = Path(tempfile.mkdtemp(prefix="accord-rehearsal-"))
    user_home = tmp / "user"
    (user_home / ".ray").mkdir(parents=True)
    token = secrets.token_hex(32)
    (user_home / ".ray" / "auth_token").write_text(token)
    (user_home / ".ray" / "auth_token").chmod(0o600)
    env = {**os.environ, "HOME": str(user_home), "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1",
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    state_dir = tmp / "cluster"
    try:
        # Grafana is not installed here; head.sh says it skips it.
        up = _rehearse("up", str(state_dir), "--workers=2", "--head-cpus=2", "--worker-cpus=2",
                       "--skip=grafana", env=env)
        state = json.loads((state_dir / "cluster.json").read_text())
        runs = tmp / "runs"
        for submission_id, cfg in JOBS.items():
            cfg = {**cfg, "placement": PLACEMENT,
                   "run": {"name": submission_id, "root": str(runs), "total_frames": 10**9,
                           "checkpoint_every": 5, "log_every": 1, "progress": False}}
            path = tmp / f"{submission_id}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            # Each job its own package: two jobs unpacking one working-dir package on the head
            # were seen (Ray 2.60, a busy machine) to start with modules missing or their
            # directory gone. The jobs leave out different unused folders, so the packages differ.
            unused = "examples" if "sac" in submission_id else "bench"
            runtime_env = {"working_dir": str(REPO),
                           "excludes": [".venv", "runs", ".git", ".hypothesis", "mutants", unused]}
            _ray_job(env, state, "submit", "--no-wait", f"--submission-id={submission_id}",
                     f"--runtime-env-json={json.dumps(runtime_env)}", "--", "accord", "train", str(path))
            # The next job once this one runs: both unpack the same working-dir package on the
            # head, and a job started while the other's unpacking was under way was seen to
            # miss modules in it (Ray 2.60).
            _wait_for(f"{submission_id} to start", lambda: _job_status(env, state, submission_id)
                      not in ("PENDING", None), 180)
        yield {"env": env, "state": state, "state_dir": state_dir, "token": token, "runs": runs,
               "tmp": tmp, "up": up}
    finally:
        if (state_dir / "cluster.json").exists():
            _rehearse("down", str(state_dir), env=env)
        if os.environ.get("ACCORD_KEEP_REHEARSAL") is None:  # set it to read the nodes' logs after
            shutil.rmtree(tmp, ignore_errors=True)


def _ray_job(env: dict, state: dict, *args: str) -> str:
    done = subprocess.run([str(BIN / "ray"), "job", args[0], f"--address={state['dashboard']}", *args[1:]],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _job_status(env: dict, state: dict, submission_id: str) -> str | None:
    token = (Path(env["HOME"]) / ".ray" / "auth_token").read_text().strip()
    try:
        return get_json(f"{state['dashboard']}/api/jobs/{submission_id}", token)["status"]
    except OSError:
        return None


def _job(cluster, submission_id: str) -> dict:
    return get_json(f"{cluster['state']['dashboard']}/api/jobs/{submission_id}", cluster["token"])


def _logs(cluster, submission_id: str) -> str:
    return get_json(f"{cluster['state']['dashboard']}/api/jobs/{submission_id}/logs", cluster["token"])["logs"]


def _assert_running(cluster, *submission_ids: str) -> None:
    for submission_id in submission_ids:
        status = _job(cluster, submission_id)["status"]
        assert status in ("PENDING", "RUNNING"), f"{submission_id} {status}:\n{_logs(cluster, submission_id)[-3000:]}"


def _run_dir(cluster, submission_id: str) -> Path | None:
    found = sorted(cluster["runs"].glob(f"{submission_id}-*"))
    return found[0] if found else None


def _checkpoints(run_dir: Path | None) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("ckpt_*.pt")) if run_dir else []


def _trained_checkpoints(run_dir: Path | None) -> list[Path]:
    """Checkpoints after updates (a run saves its initial weights at update 0 too)."""
    return [p for p in _checkpoints(run_dir) if int(p.stem.split("_")[1]) > 0]


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _nodes(cluster) -> dict[str, dict]:
    reply = get_json(f"{cluster['state']['dashboard']}/api/v0/nodes?limit=100&detail=1", cluster["token"])
    return {n["node_id"]: n for n in reply["data"]["result"]["result"] if n["state"] == "ALIVE"}


def _kind(node: dict) -> str:
    """head or worker: the accord-* resource deploy/cluster.yaml gives the node's type."""
    (kind,) = [r.removeprefix("accord-") for r in node["resources_total"] if r.startswith("accord-")]
    return kind


def _actors(cluster, run_id: str) -> dict[str, dict]:
    """The run's live actors by name, each with the node Ray placed it on (the state API)."""
    query = urllib.parse.urlencode({"limit": 1000, "detail": 1, "filter_keys": "state",
                                    "filter_predicates": "=", "filter_values": "ALIVE"})
    reply = get_json(f"{cluster['state']['dashboard']}/api/v0/actors?{query}", cluster["token"])
    return {a["name"]: a for a in reply["data"]["result"]["result"]
            if (a.get("name") or "").startswith(f"accord:{run_id}:")}


# The tests run in file order, on one cluster and the same two jobs.

def test_the_rehearsal_ran_the_setup_scripts_and_every_node_joined_with_its_resources(cluster):
    head_log = (cluster["state_dir"] / "head.log").read_text()
    assert "$ bash ~/accord/deploy/setup/node.sh" in head_log
    assert "$ bash ~/accord/deploy/setup/head.sh" in head_log
    assert f"accord: installed in {sys.prefix}" in head_log  # nothing reinstalled
    assert "grafana: skipped (ACCORD_SETUP_SKIP)" in head_log
    assert "not rehearsed (needs the cloud):" in cluster["up"] and "boto3" in cluster["up"]
    kinds = sorted(_kind(n) for n in _nodes(cluster).values())
    assert kinds == ["head", "worker", "worker"]


def test_both_jobs_reach_their_first_checkpoint(cluster):
    def both_checkpointed():
        _assert_running(cluster, *JOBS)
        return all(_trained_checkpoints(_run_dir(cluster, s)) for s in JOBS)

    _wait_for("a checkpoint of each job", both_checkpointed, STARTUP_TIMEOUT, every=2)
    assert _run_dir(cluster, "accord-mt10-pcgrad-sac") != _run_dir(cluster, "accord-atari-cosine-impala")


def test_rollout_actors_run_on_workers_and_learner_and_service_on_the_head(cluster):
    nodes = _nodes(cluster)
    role_of = {node_id: _kind(n) for node_id, n in nodes.items()}
    names = set()
    for submission_id in JOBS:
        run_id = _run_dir(cluster, submission_id).name
        actors = _wait_for(f"{run_id}'s actors", lambda: (lambda a: a if f"accord:{run_id}:learner" in a
                                                          and f"accord:{run_id}:rollout:0" in a else None)(
            _actors(cluster, run_id)), 60)
        names |= set(actors)
        for name, actor in actors.items():
            role = name.split(":")[2]
            want = "worker" if role == "rollout" else "head"
            assert role_of[actor["node_id"]] == want, f"{name} on a {role_of[actor['node_id']]} node"
    # Two runs on one cluster: every role under its own name.
    assert len([n for n in names if n.endswith(":learner")]) == 2


def test_the_dashboard_jobs_page_lists_both_jobs(cluster):
    from playwright.sync_api import sync_playwright

    dashboard = cluster["state"]["dashboard"]
    with sync_playwright() as manager:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
        browser = manager.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1000})
            # The token goes in the cookie the dashboard's own login sets, never in a URL.
            context.add_cookies([{"name": "ray-authentication-token", "value": cluster["token"],
                                  "url": dashboard}])
            page = context.new_page()
            page.goto(f"{dashboard}/#/jobs", timeout=PAGE_TIMEOUT_MS)
            for submission_id in JOBS:
                page.get_by_text(submission_id, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(cluster["tmp"] / "ray-dashboard-jobs.png"), timeout=PAGE_TIMEOUT_MS)
            text = page.inner_text("body")
        finally:
            browser.close()
    for submission_id in JOBS:
        assert submission_id in text


def test_prometheus_returns_each_jobs_frames_per_second(cluster):
    prometheus = cluster["state"]["prometheus"]
    runs = {_run_dir(cluster, s).name for s in JOBS}

    def series_by_job():
        _assert_running(cluster, *JOBS)
        query = urllib.parse.urlencode({"query": "ray_accord_frames_per_second"})
        reply = get_json(f"{prometheus}/api/v1/query?{query}")
        assert reply["status"] == "success", reply
        found = {r["metric"].get("run") for r in reply["data"]["result"]}
        return found if runs <= found else None

    _wait_for("a frames/s series of each job in Prometheus", series_by_job, 120, every=2)


def test_a_worker_node_lost_mid_run_is_survived(cluster):
    """The node of the SAC job's rollout actor is killed; Ray restarts the actor on the other
    worker (it has room), the driver counts the restart, and training goes on."""
    sac = "accord-mt10-pcgrad-sac"
    run_dir = _run_dir(cluster, sac)
    victim_id = _actors(cluster, run_dir.name)[f"accord:{run_dir.name}:rollout:0"]["node_id"]
    victim = _nodes(cluster)[victim_id]["labels"]["rehearsal-node"]
    assert victim.startswith("worker-")
    _rehearse("kill-node", str(cluster["state_dir"]), victim, env=cluster["env"])

    def restart_counted():
        _assert_running(cluster, *JOBS)
        rows = [r for r in _rows(run_dir) if float(r.get("actors/restarts") or 0) >= 1]
        return rows[0] if rows else None

    first = _wait_for("the SAC job to count its actor's restart", restart_counted, 420, every=2)
    # Training goes on: frames keep arriving from the restarted actor.
    _wait_for("frames after the restart", lambda: int(float(_rows(run_dir)[-1]["frames"]))
              > int(float(first["frames"])), 120, every=2)
    survivors = {i for i in _nodes(cluster)}
    assert victim_id not in survivors
    restarted = _actors(cluster, run_dir.name)[f"accord:{run_dir.name}:rollout:0"]
    assert restarted["node_id"] in survivors
    assert _kind(_nodes(cluster)[restarted["node_id"]]) == "worker"
    assert "rollout actor(s) restarted by Ray after their process or node was lost" in _logs(cluster, sac)
    _assert_running(cluster, *JOBS)


def test_ray_job_stop_stops_only_its_own_job_with_a_checkpoint(cluster):
    first, second = JOBS
    for stopped, still_running in ((first, second), (second, None)):
        run_dir = _run_dir(cluster, stopped)
        _ray_job(cluster["env"], cluster["state"], "stop", stopped)
        _wait_for(f"{stopped} to stop", lambda: _job(cluster, stopped)["status"] == "STOPPED", 120)
        logs = _logs(cluster, stopped)
        assert "interrupted by SIGTERM" in logs, logs[-3000:]
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "interrupted" and Path(status["checkpoint"]).is_file(), status
        if still_running:
            _assert_running(cluster, still_running)
