"""Environment factories: vectorised Atari (ale-py) and gymnasium envs behind one contract.

Dependency rule: this package imports neither Ray nor any other accord package.
"""

from .base import EpisodeStats, StepResult, TrackedVecEnv, VecEnv
from .factory import KINDS, describe, make_vec_env, normalize_task, validate_task
from .spec import EnvSpec
from .tasks import task_names

__all__ = [
    "KINDS",
    "EnvSpec",
    "EpisodeStats",
    "StepResult",
    "TrackedVecEnv",
    "VecEnv",
    "describe",
    "make_vec_env",
    "normalize_task",
    "task_names",
    "validate_task",
]
