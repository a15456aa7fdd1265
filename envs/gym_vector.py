"""Any gymnasium env with a Discrete or Box action space and a Box observation space,
vectorised with gymnasium's own ``SyncVectorEnv`` in same-step autoreset mode.

Used for cheap control tasks (CartPole-v1 for IMPALA, Pendulum-v1 and the point-goal family of
``envs.point_goal`` for SAC in the learning tests). Sync, not async: a rollout actor has one
CPU, so worker processes would only add IPC. Box actions are exchanged in [-1, 1] and rescaled
to the env's bounds by ``TrackedVecEnv``.
"""

from __future__ import annotations

import importlib

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Discrete

from .base import RawStep, TrackedVecEnv
from .spec import EnvSpec


def normalize_task(name: str) -> str:
    # Gymnasium ids are case-sensitive and versioned; only surrounding spaces are forgiven.
    return name.strip()


def validate_task(name: str) -> None:
    """Checks the id against gymnasium's registry; creates no env.

    ``"module:Env-v0"`` imports ``module`` first, as ``gymnasium.make`` does.
    """
    module, _, env_id = name.strip().rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"gym id {name!r}: cannot import module {module!r} ({exc})") from exc
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(
            f"unknown gym id {name!r}: {exc} (for Atari games use env kind 'atari')"
        ) from exc


def _check_spaces(name: str, action_space, observation_space) -> None:
    if not isinstance(action_space, Discrete | Box) or (
        isinstance(action_space, Box) and len(action_space.shape) != 1
    ):
        raise ValueError(
            f"gym id {name!r} has action space {action_space}; only Discrete and flat Box "
            f"action spaces are supported by env kind 'gym'"
        )
    if not isinstance(observation_space, Box):
        raise ValueError(
            f"gym id {name!r} has observation space {observation_space}; only Box "
            f"observations are supported by env kind 'gym'"
        )


class GymVecEnv(TrackedVecEnv):
    """``num_envs`` copies of one gymnasium env; observations float32 [M, *obs_shape].

    Options:
        task_one_hot: append a one-hot of task_id of this length to each observation (0: off).
        clip_rewards: clip the training reward to [-1, 1] (episode scores stay raw).
        max_episode_steps: override the registered time limit.
        env_kwargs: keyword arguments for the env constructor.
    """

    observation_dtype = np.dtype(np.float32)

    def __init__(
        self,
        task_name: str,
        task_id: int,
        num_envs: int,
        seed: int,
        *,
        task_one_hot: int = 0,
        clip_rewards: bool = False,
        max_episode_steps: int | None = None,
        env_kwargs: dict | None = None,
    ) -> None:
        super().__init__(normalize_task(task_name), task_id, num_envs, seed, task_one_hot)
        self.clip_rewards = clip_rewards
        self._make_kwargs = dict(env_kwargs or {})
        if max_episode_steps is not None:
            self._make_kwargs["max_episode_steps"] = max_episode_steps
        self._env: gym.vector.VectorEnv | None = None
        self._create()
        space = self._env.single_action_space
        try:
            if isinstance(space, Discrete):
                self.num_actions = int(space.n)
                self._action_start = int(space.start)  # Discrete(n, start=s) takes s..s+n-1
            else:
                self._set_action_box(space.low, space.high, space.dtype)
            self._set_observation_shape(self._env.single_observation_space.shape)
        except ValueError:
            self.close()
            raise

    def _create(self) -> None:
        env = gym.make_vec(
            self.task_name,
            self.num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
            **self._make_kwargs,
        )
        try:
            _check_spaces(self.task_name, env.single_action_space, env.single_observation_space)
        except ValueError:
            env.close()
            raise
        self._env = env

    def _reset_all(self, seed: int) -> np.ndarray:
        obs, _ = self._env.reset(seed=seed)
        return np.asarray(obs, dtype=np.float32)

    def _step_raw(self, actions) -> RawStep:
        if self.action_dim is None:
            actions = actions + self._action_start
        obs, rewards, terminated, truncated, info = self._env.step(actions)
        obs = np.asarray(obs, dtype=np.float32)
        final_obs = obs.copy()
        # SAME_STEP autoreset keeps each ended episode's last observation in the info.
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = info["final_obs"][i]
        return RawStep(
            obs,
            np.asarray(rewards, dtype=np.float64),
            np.asarray(terminated, dtype=bool),
            np.asarray(truncated, dtype=bool),
            final_obs,
        )


def make_vec_env(task_name: str, task_id: int, num_envs: int, seed: int, **options) -> GymVecEnv:
    return GymVecEnv(task_name, task_id, num_envs, seed, **options)


def describe(task_name: str, *, env_kwargs: dict | None = None, **_options):
    """The `EnvSpec` from one env that is made and closed, not stepped (without the task
    one-hot, which ``envs.describe`` adds)."""
    env = gym.make(normalize_task(task_name), **(env_kwargs or {}))
    try:
        _check_spaces(task_name, env.action_space, env.observation_space)
        obs_shape = tuple(env.observation_space.shape)
        if isinstance(env.action_space, Discrete):
            return EnvSpec(obs_shape, np.dtype(np.float32), num_actions=int(env.action_space.n))
        return EnvSpec(obs_shape, np.dtype(np.float32), action_dim=int(env.action_space.shape[0]))
    finally:
        env.close()
