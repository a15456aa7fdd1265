"""The monitoring stack end to end, all real and on 127.0.0.1: a Ray head (`ray start`, token
auth on), four short accord runs started at once as drivers on the head (cosine gate per layer,
OL-AUX, PCGrad on two gridworlds, SAC on Meta-World MT1 with evaluations), Prometheus
started by `accord monitor` with deploy/monitoring/prometheus.yml (only the path of Ray's
service-discovery file adapted to this head's temp dir), and Debian's Chromium.

Checks: every PromQL expression of the Grafana dashboard, its variables substituted, returns
data; the dashboard's variables find this session and its tasks; `promtool check config`
accepts the shipped config; the Ray dashboard's Actors page lists the runs' named actors with
their reprs; Prometheus's graph page plots accord's frames/s; the job log has progress lines.
Screenshots of both pages are written to $ACCORD_SCREENSHOTS (default: the test's tmp dir).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
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

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DASHBOARD_JSON = REPO / "deploy" / "monitoring" / "grafana" / "dashboards" / "accord.json"
PROMETHEUS_YML = REPO / "deploy" / "monitoring" / "prometheus.yml"
CHROMIUM = "/usr/bin/chromium"
# The runs train until the test has seen what it checks, then get SIGTERM (accord's clean
# stop: checkpoint, exit 0), so a slow machine makes the test slower, never wrong.
STARTUP_TIMEOUT = 300
# A page load and what it waits for: the dashboard and Prometheus answer slowly while the four
# runs start on 2 cores (a Page.goto once took over Playwright's default 30 s).
PAGE_TIMEOUT_MS = STARTUP_TIMEOUT * 1000

_GRIDWORLD = {
    "env": {"kind": "gridworld", "tasks": ["world-3-main"], "envs_per_actor": 8},
    "actors": {"num_actors": 1, "unroll_length": 20},
    "queue": {"capacity": 8},
    "learner": {"batch_size": 8, "aux": {"distill": {"teacher": "q_aux", "temperature": 0}}},
    "run": {"total_frames": 10**8, "log_every": 1,
            "checkpoint_every": 10**6},
}
RUNS = {
    "cos": {**_GRIDWORLD, "learner": {**_GRIDWORLD["learner"], "combiner": {
        "name": "cosine_gate", "options": {"mode": "unweighted", "per_layer": True}}}},
    "olaux": {**_GRIDWORLD, "learner": {**_GRIDWORLD["learner"], "combiner": {
        "name": "olaux", "options": {"horizon": 2}}}},
    "pcgrad": {**_GRIDWORLD, "env": {**_GRIDWORLD["env"], "tasks": ["world-3", "world-4"]},
               "learner": {"batch_size": 8, "combiner": {"name": "pcgrad"}}},
    "sac": {"env": {"kind": "metaworld", "benchmark": "MT1", "tasks": ["reach-v3"], "envs_per_actor": 1},
            "actors": {"num_actors": 1, "unroll_length": 50},
            "replay": {"capacity_per_task": 5000, "learning_starts": 200, "samples_per_insert": 2},
            "learner": {"algorithm": "sac", "sac": {"hidden": [32, 32], "batch_per_task": 16}},
            "run": {"total_frames": 10**8, "log_every": 1,
                    "checkpoint_every": 10**6, "eval_every": 10, "eval_episodes": 1}},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Ray head + Prometheus (`accord monitor`) + the four runs' drivers, started at once."""
    tmp = tmp_path_factory.mktemp("monitoring")
    token = secrets.token_hex(32)
    temp_dir = tempfile.mkdtemp(prefix="raym-", dir="/tmp")  # Ray's socket paths stay short
    port, dashboard_port, prom_port = _free_port(), _free_port(), _free_port()
    prometheus = f"http://127.0.0.1:{prom_port}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp),
           "RAY_PROMETHEUS_HOST": prometheus, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=8",
         f"--metrics-export-port={_free_port()}", f"--temp-dir={temp_dir}",
         "--disable-usage-stats", "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sd_file = Path(temp_dir) / "prom_metrics_service_discovery.json"
    monitor = subprocess.Popen(
        [str(BIN / "accord"), "monitor", f"--port={prom_port}", f"--data-dir={tmp / 'prom'}",
         f"--sd-file={sd_file}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    drivers: dict[str, subprocess.Popen] = {}
    try:
        _wait_for("Prometheus", lambda: urllib.request.urlopen(f"{prometheus}/-/ready", timeout=5).status == 200, 60)
        _wait_for("the Ray dashboard", lambda: get_json(f"{dashboard}/api/version", token), 90, every=1)
        started = time.time()
        for name, cfg in RUNS.items():
            cfg = {**cfg, "run": {**cfg["run"], "name": f"mon-{name}", "root": str(tmp / "runs")}}
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            # Drivers on the head, as `ray job submit` runs them; their output is the job log.
            with open(tmp / f"{name}.log", "w") as log:
                drivers[name] = subprocess.Popen(
                    [str(BIN / "accord"), "train", str(path), f"--address=127.0.0.1:{port}"],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        session = Path(os.path.realpath(Path(temp_dir) / "session_latest")).name
        yield {"drivers": drivers, "token": token, "dashboard": dashboard,
               "prometheus": prometheus, "session": session, "started": started, "tmp": tmp}
    finally:
        for driver in drivers.values():
            if driver.poll() is None:
                driver.kill()
        monitor.send_signal(signal.SIGINT)  # accord monitor stops its Prometheus on Ctrl-C
        try:
            monitor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            monitor.kill()
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _alive_accord_actors(stack) -> list[dict]:
    query = urllib.parse.urlencode({"limit": 1000, "filter_keys": "state", "filter_predicates": "=",
                                    "filter_values": "ALIVE"})
    reply = get_json(f"{stack['dashboard']}/api/v0/actors?{query}", stack["token"])
    return [a for a in reply["data"]["result"]["result"] if (a.get("name") or "").startswith("accord:")]


def _running(stack) -> None:
    ended = {n: d.poll() for n, d in stack["drivers"].items() if d.poll() is not None}
    assert not ended, f"runs ended early (exit codes {ended}):\n" + "\n".join(
        (stack["tmp"] / f"{n}.log").read_text()[-1500:] for n in ended)


def _query_range(stack, query: str) -> list:
    params = urllib.parse.urlencode({"query": query, "start": stack["started"] - 60,
                                     "end": time.time(), "step": 2})
    reply = get_json(f"{stack['prometheus']}/api/v1/query_range?{params}")
    assert reply["status"] == "success", (query, reply)
    return reply["data"]["result"]


def _browser():
    from playwright.sync_api import sync_playwright

    manager = sync_playwright().start()
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
    browser = manager.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
    return manager, browser


def _screenshots_dir(stack) -> Path:
    path = Path(os.environ.get("ACCORD_SCREENSHOTS", stack["tmp"] / "screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# The tests run in file order: the Actors page while the runs live, the rest after they end.

def test_actors_page_lists_the_named_actors_with_their_reprs(stack):
    def cos_run_alive():
        _running(stack)  # a run that died fails here at once, with its log
        names = {a["name"] for a in _alive_accord_actors(stack)}
        return next((n.split(":")[1] for n in names
                     if n.startswith("accord:mon-cos-") and n.endswith(":rollout:0")), None)

    cos_run = _wait_for("the cosine run's rollout actor", cos_run_alive, STARTUP_TIMEOUT, every=1)
    expected = [f"accord:{cos_run}:rollout:0", f"accord:{cos_run}:learner"]

    manager, browser = _browser()
    try:
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        # The token goes in the cookie the dashboard's own login sets, never in a URL.
        context.add_cookies([{"name": "ray-authentication-token", "value": stack["token"],
                              "url": stack["dashboard"]}])
        page = context.new_page()
        page.goto(f"{stack['dashboard']}/#/actors", timeout=PAGE_TIMEOUT_MS)
        # The table shows ten actors a page, the newest first, and the four runs have about
        # seventeen: filtered by name, as a user finds one run's actors, they all fit one page.
        page.get_by_label("Name", exact=True).first.fill(f"accord:{cos_run}:", timeout=PAGE_TIMEOUT_MS)
        page.get_by_text(expected[0], exact=True).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        page.screenshot(path=str(_screenshots_dir(stack) / "ray-dashboard-actors.png"), timeout=PAGE_TIMEOUT_MS)
        text = page.inner_text("body")
        for name in expected:
            assert name in text, f"{name} not on the Actors page"
        assert "RolloutActor(rollout 0, tasks world-3-main" in text
        assert "LearnerActor(learner, impala on cpu" in text
        assert stack["token"] not in page.url
    finally:
        browser.close()
        manager.stop()


def test_every_role_of_every_run_has_its_own_name(stack):
    def roles_by_run() -> dict[str, set[str]]:
        _running(stack)
        query = urllib.parse.urlencode({"limit": 1000})
        reply = get_json(f"{stack['dashboard']}/api/v0/actors?{query}", stack["token"])
        names = [a["name"] for a in reply["data"]["result"]["result"]
                 if (a.get("name") or "").startswith("accord:")]
        by_run: dict[str, set[str]] = {}
        for name in names:
            _, run, role = name.split(":", 2)
            by_run.setdefault(run, set()).add(role)
        return by_run

    def expected_roles(run: str) -> set[str]:
        # the driver creates SAC's evaluator last, after the learner's first publish: waited
        # for like the others, not read from the first snapshot that has the rest
        if run.startswith("mon-sac-"):
            return {"learner", "weights", "rollout:0", "replay:0", "evaluator"}
        return {"learner", "weights", "rollout:0", "queue"}

    def complete(by_run):
        return len(by_run) == len(RUNS) and all(
            expected_roles(run) <= roles for run, roles in by_run.items())

    by_run = _wait_for("every role of the four runs", lambda: (lambda r: r if complete(r) else None)(
        roles_by_run()), STARTUP_TIMEOUT, every=2)
    # four runs on one cluster, each role under its own name
    assert sorted(r.rsplit("-", 2)[0] for r in by_run) == ["mon-cos", "mon-olaux", "mon-pcgrad", "mon-sac"]
    # only the run that evaluates has an evaluator
    assert [r for r, roles in by_run.items() if "evaluator" in roles] == [
        next(r for r in by_run if r.startswith("mon-sac-"))]


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def test_every_dashboard_query_returns_data(stack):
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    queries = {f"{title}: {expr}": expr.replace("$SessionName", stack["session"]).replace("$task", ".+")
               for title, expr in exprs}
    assert not [q for q in queries.values() if "$" in q]
    empty = list(queries)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while empty and time.monotonic() < deadline:  # until each run has been scraped with all it reports
        _running(stack)
        empty = [name for name in empty if not _query_range(stack, queries[name])]
        time.sleep(2)
    assert not empty, "no data for:\n" + "\n".join(empty)


def test_dashboard_variables_find_this_session_and_its_tasks(stack):
    prometheus, session = stack["prometheus"], stack["session"]
    variables = {v["name"]: v for v in json.loads(DASHBOARD_JSON.read_text())["templating"]["list"]}
    assert {"datasource", "SessionName", "task"} <= set(variables)

    def label_values(definition: str) -> list[str]:
        series, label = re.fullmatch(r"label_values\((.+), (\w+)\)", definition).groups()
        series = series.replace("$SessionName", session)
        params = urllib.parse.urlencode({"match[]": series, "start": stack["started"] - 60, "end": time.time()})
        return get_json(f"{prometheus}/api/v1/label/{label}/values?{params}")["data"]

    assert session in label_values(variables["SessionName"]["definition"])
    tasks = set(label_values(variables["task"]["definition"]))
    assert {"world-3-main", "world-3", "world-4", "reach-v3"} <= tasks, tasks


def test_combiner_metrics_carry_term_and_layer_labels(stack):
    query = f'ray_accord_combiner_cosine{{SessionName="{stack["session"]}",term="distill"}}'
    params = urllib.parse.urlencode({"query": query, "start": stack["started"] - 60, "end": time.time(), "step": 2})
    layers = {s["metric"]["layer"] for s in get_json(f"{stack['prometheus']}/api/v1/query_range?{params}")["data"]["result"]}
    # the layer mean and the per-layer cosines of the gridworld network
    assert "all" in layers and len(layers) >= 3, layers


def test_prometheus_graph_page_plots_frames_per_second(stack):
    expr = f'ray_accord_frames_per_second{{SessionName="{stack["session"]}"}}'
    url = (f"{stack['prometheus']}/graph?" + urllib.parse.urlencode(
        {"g0.expr": expr, "g0.tab": "0", "g0.range_input": "5m", "g0.end_input": "", "g0.stacked": "0"}))
    manager, browser = _browser()
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 800})
        page.goto(url, timeout=PAGE_TIMEOUT_MS)
        # Debian's Prometheus serves the classic UI: a rickshaw graph with one legend line per series.
        legend = page.locator(".rickshaw_legend .line")
        legend.first.wait_for(timeout=PAGE_TIMEOUT_MS)
        page.screenshot(path=str(_screenshots_dir(stack) / "prometheus-frames-per-second.png"), timeout=PAGE_TIMEOUT_MS)
        assert legend.count() >= 1
        assert "ray_accord_frames_per_second" in page.inner_text(".rickshaw_legend")
        series = int(re.search(r"Total time series: (\d+)", page.inner_text("body")).group(1))
        assert series == legend.count() >= 1
    finally:
        browser.close()
        manager.stop()


def test_promtool_accepts_the_shipped_config():
    result = subprocess.run(["promtool", "check", "config", str(PROMETHEUS_YML)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_runs_stop_cleanly_and_their_logs_show_progress(stack):
    _running(stack)
    for driver in stack["drivers"].values():
        driver.send_signal(signal.SIGTERM)  # what `ray job stop` sends
    codes = {n: d.wait(timeout=120) for n, d in stack["drivers"].items()}
    logs = {n: (stack["tmp"] / f"{n}.log").read_text() for n in RUNS}
    for name, code in codes.items():
        assert code == 0, f"{name}: exit code {code}\n{logs[name][-2000:]}"
        # off a terminal the console prints one line per metrics row
        assert re.search(r"frames [\d,]+ \| [\d,.]+ fps \| [\d.]+ upd/s", logs[name]), logs[name][-2000:]
        assert stack["token"] not in logs[name]
