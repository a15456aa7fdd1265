"""Metric rows reach Ray's metrics (the dashboard's Metrics view reads the same Prometheus
endpoint that this test scrapes)."""
import socket
import time
import urllib.request

import pytest
import ray

from accord.metrics import MetricsSink
from tests.support.local_ray import init_local_ray

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_metric_rows_are_exported_as_ray_gauges(tmp_path):
    port = _free_port()
    init_local_ray(num_cpus=1, include_dashboard=False, _metrics_export_port=port,
                   configure_logging=False, log_to_driver=False)
    try:
        sink = MetricsSink(tmp_path, use_ray=True, tensorboard=False, run="breakout-1")
        deadline, found = time.monotonic() + 60, {}
        while time.monotonic() < deadline and len(found) < 2:
            sink.write(1, {"fps": 1234.5, "return/breakout": 2.5})
            time.sleep(2)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            for line in text.splitlines():
                # one metric per quantity, the task as a label
                if line.startswith("ray_accord_frames_per_second{") and 'run="breakout-1"' in line:
                    found["fps"] = float(line.rsplit(" ", 1)[1])
                if line.startswith("ray_accord_return{") and 'task="breakout"' in line:
                    found["return"] = float(line.rsplit(" ", 1)[1])
        assert found == {"fps": 1234.5, "return": 2.5}
        sink.close()
    finally:
        ray.shutdown()
