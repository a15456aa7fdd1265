"""How the driver starts Ray (`accord.driver.init_ray`), without starting it: `ray.init` is
replaced by a recorder. tests/integration/test_embedded_ray.py starts the real one."""
from __future__ import annotations

import pytest

from accord import driver


@pytest.fixture
def ray_init_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(driver.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(driver.ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_embedded_ray_runs_its_workers_at_niceness_0(ray_init_calls):
    # At Ray's default niceness (15) every actor of the run yields to any other process, and a
    # SAC run on a busy machine crawled at ~0.5 updates/s.
    assert driver.init_ray(None, num_actors=2) is True
    (kwargs,) = ray_init_calls
    assert kwargs["_system_config"]["worker_niceness"] == 0


def test_a_joined_cluster_keeps_its_own_settings(ray_init_calls):
    # Ray refuses a _system_config when it connects to a running cluster: there `ray start`
    # decides (deploy/cluster.yaml).
    assert driver.init_ray("127.0.0.1:6379") is False
    (kwargs,) = ray_init_calls
    assert kwargs["address"] == "127.0.0.1:6379"
    assert "_system_config" not in kwargs


def test_the_embedded_dashboard_is_on_by_default_on_loopback_and_can_be_left_out(ray_init_calls):
    driver.init_ray(None)
    driver.init_ray(None, dashboard=False)
    first, second = ray_init_calls
    assert first["include_dashboard"] is True and first["dashboard_host"] == "127.0.0.1"
    assert second["include_dashboard"] is False


def test_run_dashboard_reaches_init_ray(monkeypatch, tmp_path):
    """`--set run.dashboard=false` is what the driver hands to `init_ray` (the call stops there)."""
    from accord.config import load_config

    seen = []

    def init_ray(address, num_actors, prometheus_host, grafana_host, dashboard):
        seen.append(dashboard)
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "init_ray", init_ray)
    for value in ("true", "false"):
        cfg = load_config("configs/cartpole.yaml", [f"run.dashboard={value}"])
        with pytest.raises(KeyboardInterrupt):
            driver.train(cfg, tmp_path / value)
    assert seen == [True, False]
