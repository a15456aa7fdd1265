"""The Ray that `accord train` starts for itself (`accord.driver.init_ray`, no address): its
workers, which are every actor of the run, share the CPU with the rest of the machine as equals
(tests/unit/test_embedded_ray.py checks the call without Ray)."""
from __future__ import annotations

import os

import ray

from accord.driver import init_ray


@ray.remote(num_cpus=0)
class _Niceness:
    def get(self) -> int:
        return os.nice(0)


def test_embedded_ray_workers_run_at_niceness_0(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # no dashboard: not what is checked, and its processes slow the node's start on 2 busy cores
    assert init_ray(None, num_actors=1, dashboard=False) is True
    try:
        assert ray.get(_Niceness.remote().get.remote(), timeout=120) == 0
    finally:
        ray.shutdown()
