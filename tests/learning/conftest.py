"""One local Ray head per learning module, joined by each `accord train` run the module starts
(`--address`): a run then costs its training and its actors' start, not another Ray start-up
as well (on 2 cores that start-up was over half of a short gridworld run's wall time). The
head's workers run at niceness 0, as the embedded Ray's do (accord/driver.py says why)."""
import pytest
import ray

from accord.driver import EMBEDDED_SYSTEM_CONFIG
from tests.support.local_ray import init_local_ray

# Two runs at a time (test_aux.py) of two rollout actors and a learner, one CPU slot each.
CPU_SLOTS = 8


@pytest.fixture(scope="module")
def ray_address() -> str:
    init_local_ray(num_cpus=CPU_SLOTS, include_dashboard=False,
                   _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False,
                   _system_config=EMBEDDED_SYSTEM_CONFIG)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
