"""Environment factories: vectorised Atari (ale-py), gymnasium and Meta-World envs behind one
contract, single-task or several tasks side by side.

Importing the package registers the PointGoal tasks (``envs.point_goal``) with gymnasium.

Dependency rule: this package imports neither Ray nor any other accord package.
"""

from . import point_goal
from .base import EpisodeStats, StepResult, TrackedVecEnv, VecEnv
from .factory import KINDS, describe, make_vec_env, normalize_task, validate_task
from .multitask import MultiTaskVecEnv, make_multitask_vec_env
from .spec import EnvSpec
from .tasks import task_names

point_goal.register()

__all__ = [
    "KINDS",
    "EnvSpec",
    "EpisodeStats",
    "MultiTaskVecEnv",
    "StepResult",
    "TrackedVecEnv",
    "VecEnv",
    "describe",
    "make_multitask_vec_env",
    "make_vec_env",
    "normalize_task",
    "task_names",
    "validate_task",
]
