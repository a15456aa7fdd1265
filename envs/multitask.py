"""Several tasks behind one VecEnv, so one rollout actor can serve several tasks.

A multi-task SAC actor (MT10 with fewer actors than tasks) steps, say, 10 Meta-World envs at
once, one per task, with one batched policy call. :class:`MultiTaskVecEnv` lays the parts side
by side: env ``j`` of part ``k`` is env ``offset_k + j`` of the whole, ``task_ids`` tells the
policy which task each env runs, and a step splits the actions the same way.
"""

from __future__ import annotations

import numpy as np

from .base import EpisodeStats, StepResult, VecEnv
from .factory import make_vec_env


def _part_name(env: VecEnv) -> str:
    return getattr(env, "task_name", type(env).__name__)


def _spaces(env: VecEnv) -> tuple:
    return (tuple(env.observation_shape), np.dtype(env.observation_dtype), env.num_actions, env.action_dim)


class MultiTaskVecEnv:
    """Concatenates vector envs (one per task) with the same spaces into one :class:`VecEnv`.

    Episodes come in env order (part by part), ``env_errors`` is the parts' sum, and each part
    recovers from its own env failures. ``final_obs`` is None if any part keeps none (Atari).
    """

    def __init__(self, envs: list[VecEnv]) -> None:
        if not envs:
            raise ValueError("MultiTaskVecEnv needs at least one vector env")
        first = envs[0]
        for env in envs[1:]:
            if _spaces(env) != _spaces(first):
                raise ValueError(
                    f"tasks {_part_name(first)!r} and {_part_name(env)!r} cannot share a MultiTaskVecEnv: "
                    f"(obs shape, obs dtype, num_actions, action_dim) {_spaces(first)} != {_spaces(env)}"
                )
        self.parts = list(envs)
        self.observation_shape, self.observation_dtype, self.num_actions, self.action_dim = _spaces(first)
        sizes = [env.num_envs for env in envs]
        self.num_envs = int(sum(sizes))
        self._bounds = np.cumsum([0, *sizes])  # part k owns envs _bounds[k]:_bounds[k + 1]
        self.task_ids = np.concatenate([np.asarray(env.task_ids, dtype=np.int64) for env in envs])
        self.task_names = tuple(_part_name(env) for env in envs)

    @property
    def env_errors(self) -> int:
        return sum(env.env_errors for env in self.parts)

    def teacher_probs(self, source: str, temperature: float = 0.0, invert: bool = False) -> np.ndarray:
        """The parts' teachers side by side (gridworld tasks; see GridWorldVecEnv.teacher_probs)."""
        return np.concatenate([env.teacher_probs(source, temperature, invert) for env in self.parts])

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Part k is reset with ``seed + offset_k``, so env i of the whole gets seed ``seed + i``
        and no two envs share a seed; with None each part derives its own."""
        return np.concatenate([
            env.reset(None if seed is None else seed + int(start))
            for env, start in zip(self.parts, self._bounds[:-1])
        ])

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions)
        expected = (self.num_envs,) if self.action_dim is None else (self.num_envs, self.action_dim)
        if actions.shape != expected:
            raise ValueError(f"actions must have shape {expected} for tasks {self.task_names}, got {actions.shape}")
        results = [
            env.step(actions[start:stop])
            for env, start, stop in zip(self.parts, self._bounds[:-1], self._bounds[1:])
        ]
        episodes: list[EpisodeStats] = [ep for result in results for ep in result.episodes]
        keeps_final_obs = all(result.final_obs is not None for result in results)
        return StepResult(
            obs=np.concatenate([r.obs for r in results]),
            rewards=np.concatenate([r.rewards for r in results]),
            terminated=np.concatenate([r.terminated for r in results]),
            truncated=np.concatenate([r.truncated for r in results]),
            episodes=episodes,
            final_obs=np.concatenate([r.final_obs for r in results]) if keeps_final_obs else None,
        )

    def close(self) -> None:
        for env in self.parts:
            env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def make_multitask_vec_env(
    kind: str,
    task_names: list[str],
    task_ids: list[int],
    envs_per_task: int,
    seed: int,
    **options,
) -> MultiTaskVecEnv:
    """``envs_per_task`` copies of each task, in the given order, as one vector env.

    Task k's part is made with seed ``seed + k * envs_per_task`` (distinct reset streams per
    part); ``options`` go to every part (``task_one_hot``, ``benchmark``, ...).
    """
    if len(task_names) != len(task_ids):
        raise ValueError(f"{len(task_names)} task names {list(task_names)} but {len(task_ids)} task ids {list(task_ids)}")
    if not task_names:
        raise ValueError(f"no tasks given for a multi-task env of kind {kind!r}")
    parts: list[VecEnv] = []
    try:
        for k, (name, task_id) in enumerate(zip(task_names, task_ids)):
            parts.append(make_vec_env(kind, name, task_id, envs_per_task, seed + k * envs_per_task, **options))
        return MultiTaskVecEnv(parts)
    except Exception:
        for env in parts:
            env.close()
        raise
