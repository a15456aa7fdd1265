"""Whether the running Ray actor's process is a restart: Ray ran its `__init__` again after the
previous process died (a rollout actor reseeds its envs, the learner reloads its checkpoint)."""
from __future__ import annotations

import warnings

import ray


def restarted_by_ray() -> bool:
    with warnings.catch_warnings():  # Ray 2.60 reads a deprecated property inside it
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray.get_runtime_context().was_current_actor_reconstructed
