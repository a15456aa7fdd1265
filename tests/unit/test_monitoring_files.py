"""deploy/monitoring (Grafana dashboard, Prometheus config), `accord monitor`'s helpers and the
driver's actor names, without servers (tests/integration/test_monitoring.py runs them)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from accord.driver import actor_name, monitoring_env
from accord.metric_names import TABLE
from accord.monitor import RAY_SD_FILE, SHIPPED_CONFIG, adapted_config, prometheus_command

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "monitoring" / "grafana" / "dashboards" / "accord.json"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_has_a_fixed_uid_and_rays_variables():
    dashboard = _dashboard()
    assert dashboard["uid"] == "accord-training"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "SessionName" in variables["SessionName"]["definition"]
    assert variables["task"]["multi"] and variables["task"]["includeAll"]


def test_every_panel_queries_accord_metrics_of_the_chosen_session():
    known = {name for _, name, _, _ in TABLE}
    targets = [t for p in _dashboard()["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 15
    for target in targets:
        assert target["datasource"]["uid"] == "${datasource}"
        names = re.findall(r"\bray_(accord_[a-z0-9_]+)\{", target["expr"])
        assert names, target["expr"]
        assert set(names) <= known, set(names) - known  # a typo would be a panel with no data
        assert target["expr"].count('SessionName=~"$SessionName"') == len(names), target["expr"]


def test_dashboard_covers_the_quantities_watched_during_a_run():
    exprs = " ".join(t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", []))
    for metric in ("frames_per_second", "updates_per_second", "queue_depth", "replay_depth",
                   "policy_lag", "return", "success_ratio", "loss", "combiner_cosine",
                   "combiner_gate", "olaux_weight", "pcgrad_conflicts", "restarts", "lost_unrolls"):
        assert f"ray_accord_{metric}{{" in exprs, metric


def test_prometheus_config_scrapes_rays_service_discovery_file():
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"] == [{"files": [RAY_SD_FILE]}]


def test_adapted_config_changes_only_the_discovery_path():
    text = SHIPPED_CONFIG.read_text()
    adapted = adapted_config(text, "/tmp/ray-x/prom_metrics_service_discovery.json")
    assert adapted.replace("/tmp/ray-x/", "/tmp/ray/") == text
    assert RAY_SD_FILE not in adapted


def test_prometheus_listens_on_loopback_only():
    command = prometheus_command("prometheus", Path("/c.yml"), Path("/d"), 9191)
    assert "--web.listen-address=127.0.0.1:9191" in command


def test_monitor_without_prometheus_says_how_to_install_it(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no /usr/bin: no prometheus
    result = subprocess.run([sys.executable, "-m", "accord.cli", "monitor", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no `prometheus` on PATH; install it with: sudo apt-get install prometheus"]


def test_actor_names_keep_runs_and_roles_apart():
    assert actor_name("breakout-20260101-120000", "rollout", 3) == "accord:breakout-20260101-120000:rollout:3"
    assert actor_name("run-a", "learner") == "accord:run-a:learner"
    names = {actor_name(run, role, i) for run in ("a", "b") for role in ("rollout", "replay")
             for i in (0, 1)}
    assert len(names) == 8


def test_monitoring_env_keeps_what_the_user_set(monkeypatch):
    monkeypatch.delenv("RAY_PROMETHEUS_HOST", raising=False)
    monkeypatch.delenv("RAY_GRAFANA_HOST", raising=False)
    assert monitoring_env("http://127.0.0.1:9090", None) == {"RAY_PROMETHEUS_HOST": "http://127.0.0.1:9090"}
    assert monitoring_env("http://127.0.0.1:9090", "http://127.0.0.1:3000") == {
        "RAY_PROMETHEUS_HOST": "http://127.0.0.1:9090", "RAY_GRAFANA_HOST": "http://127.0.0.1:3000"}
    monkeypatch.setenv("RAY_PROMETHEUS_HOST", "http://prom:9090")
    assert monitoring_env("http://127.0.0.1:9090", None) == {}
