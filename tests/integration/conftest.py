"""Real Ray on loopback for the integration tests: one local head shared by the module."""
import pytest
import ray

from tests.support.local_ray import init_local_ray


@pytest.fixture(scope="module")
def local_ray():
    init_local_ray(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
                   configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()
