"""A local Ray head started inside a test process.

Ray gives a node it starts a fixed 30 s to register with its GCS (`raylet_start_wait_time_s` in
ray/_private/node.py, not configurable); on 2 cores busy with the suite's other processes a
start once missed it ("The current node timed out during startup"). One more try then starts
it, with a warning in the test report, so that a slow start is seen, never hidden."""
from __future__ import annotations

import warnings

import ray

STARTUP_TRIES = 2


def init_local_ray(**kwargs) -> None:
    """`ray.init(address="local", **kwargs)`, tried again once if the node timed out starting."""
    for attempt in range(1, STARTUP_TRIES + 1):
        try:
            ray.init(address="local", **kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == STARTUP_TRIES:
                raise
            ray.shutdown()
            warnings.warn(f"Ray's local node missed its registration window ({exc}); starting it "
                          f"again (try {attempt + 1} of {STARTUP_TRIES})", RuntimeWarning)
