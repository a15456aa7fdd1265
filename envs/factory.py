"""One entry point for every env kind: ``make_vec_env``, ``describe``, ``validate_task``.

``KINDS`` maps a kind to the module that implements it. Each such module defines
``make_vec_env(task_name, task_id, num_envs, seed, **options)``, ``describe(task_name,
**options)``, ``validate_task(task_name)`` and ``normalize_task(task_name)``; adding a kind is
one module plus one line here. Modules are imported on first use so that, say, a
CartPole-only run never imports MuJoCo.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from .base import VecEnv
from .spec import EnvSpec

KINDS: dict[str, str] = {
    "atari": ".atari",  # relative to this package; an absolute module path works too
    "gym": ".gym_vector",
    "gridworld": ".gridworld",
    "metaworld": ".metaworld",
}


def _kind_module(kind: str) -> ModuleType:
    if kind not in KINDS:
        raise ValueError(f"unknown env kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return importlib.import_module(KINDS[kind], __package__)


def make_vec_env(kind: str, task_name: str, task_id: int, num_envs: int, seed: int, **options) -> VecEnv:
    """Creates ``num_envs`` copies of one task; call ``reset()`` before the first ``step``."""
    return _kind_module(kind).make_vec_env(task_name, task_id, num_envs, seed, **options)


def describe(kind: str, task_name: str, *, task_one_hot: int = 0, **options) -> EnvSpec:
    """The task's spaces, for sizing a model before any actor starts. May create and close
    one env; never steps it. With ``task_one_hot=K`` the observation is K entries longer, as
    the envs made with that option return it."""
    spec = _kind_module(kind).describe(task_name, **options)
    if task_one_hot < 0:
        raise ValueError(f"task_one_hot must be >= 0 (0: off), got {task_one_hot}")
    if not task_one_hot:
        return spec
    if len(spec.obs_shape) != 1:
        raise ValueError(
            f"task {task_name!r}: task_one_hot needs vector observations, got shape {spec.obs_shape}"
        )
    return EnvSpec((spec.obs_shape[0] + task_one_hot,), np.dtype(np.float32),
                   num_actions=spec.num_actions, action_dim=spec.action_dim)


def validate_task(kind: str, task_name: str) -> None:
    """Raises ValueError naming the task when it does not exist; fast, creates no env."""
    _kind_module(kind).validate_task(task_name)


def normalize_task(kind: str, task_name: str) -> str:
    """The canonical spelling of a task name (e.g. "BreakoutNoFrameskip-v4" -> "breakout")."""
    return _kind_module(kind).normalize_task(task_name)
