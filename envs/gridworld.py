"""Env kind "gridworld": the gridworlds of paper 000 (Du et al., "Adapting Auxiliary Losses
Using Gradient Similarity", Sec. 3.2 and App. F) behind the VecEnv contract. The world
itself (layout, noise, rewards, observation) is in envs/gridworld_world.py, its tabular
Q-learning teacher in envs/gridworld_teacher.py.

Task names (one world per seed, the seed picks the layout):

    world-<seed>        T_aux, the original world with its +10 rewards (the teacher's world)
    world-<seed>-main   T_main, the same layout without the +10 rewards
"""
from __future__ import annotations

import re

import numpy as np

from .base import RawStep, TrackedVecEnv
from .gridworld_teacher import teacher_probs, world_q
from .gridworld_world import (  # noqa: F401  (re-exported: the gridworld's names in one place)
    BIG_REWARD, CHANNELS, MOVES, NUM_ACTIONS, OBS_SIZE, SIZE, SMALL_REWARD, VIEW, VIEW_RADIUS,
    GridWorld, Outcome, sample_world)
from .spec import EnvSpec

_TASK = re.compile(r"world-(\d+)(-main)?")


def parse_task(name: str) -> tuple[int, bool]:
    """``"world-7"`` -> (7, False), ``"world-7-main"`` -> (7, True)."""
    match = _TASK.fullmatch(normalize_task(name))
    if match is None:
        raise ValueError(f"unknown gridworld task {name!r}: expected 'world-<seed>' or 'world-<seed>-main'")
    return int(match.group(1)), match.group(2) is not None


def world_for_task(name: str) -> GridWorld:
    seed, main = parse_task(name)
    world = sample_world(seed)
    return world.without_big_rewards() if main else world


def normalize_task(name: str) -> str:
    return name.strip().lower()


def validate_task(name: str) -> None:
    parse_task(name)


class GridWorldVecEnv(TrackedVecEnv):
    """``num_envs`` agents in one world of the task; observations float32 [M, OBS_SIZE]."""

    observation_dtype = np.dtype(np.float32)
    num_actions = NUM_ACTIONS

    def __init__(self, task_name: str, task_id: int, num_envs: int, seed: int, *, task_one_hot: int = 0) -> None:
        super().__init__(normalize_task(task_name), task_id, num_envs, seed, task_one_hot)
        self.world = world_for_task(self.task_name)
        self._set_observation_shape((OBS_SIZE,))
        self._create()

    @property
    def positions(self) -> np.ndarray:
        """int64 [M, 2]: each agent's cell, for a teacher that sees the whole state."""
        return self._pos.copy()

    def teacher_probs(self, source: str, temperature: float = 0.0, invert: bool = False) -> np.ndarray:
        """float32 [M, NUM_ACTIONS]: the tabular teacher's policy at each agent's cell.

        source "q_aux" is paper 000's teacher, Q-learned on T_aux (the world with its +10
        rewards); "q_main" is Q-learned on T_main itself (the paper's same-task teacher).
        `invert` gives the adversarial teacher softmax(-Q / temperature) (argmin at 0).
        """
        seed, _ = parse_task(self.task_name)
        q = world_q(seed, source)
        return teacher_probs(-q if invert else q, self._pos, temperature).astype(np.float32)

    def _create(self) -> None:
        self._env = None  # pure numpy: nothing to rebuild
        self._rng = np.random.default_rng(0)
        self._pos = np.tile(np.array(self.world.start, dtype=np.int64), (self.num_envs, 1))

    def _reset_all(self, seed: int) -> np.ndarray:
        self._rng = np.random.default_rng(seed)
        self._pos[:] = self.world.start
        return self.world.observe(self._pos)

    def _step_raw(self, actions: np.ndarray) -> RawStep:
        out = self.world.step(self._pos, actions.astype(np.int64), self._rng)
        final_obs = self.world.observe(out.pos)
        self._pos = out.pos
        self._pos[out.terminated] = self.world.start  # same-step autoreset
        obs = final_obs.copy()
        if out.terminated.any():
            obs[out.terminated] = self.world.observe(self._pos[out.terminated])
        return RawStep(obs, out.reward, out.terminated, np.zeros(self.num_envs, dtype=bool), final_obs)


def make_vec_env(task_name: str, task_id: int, num_envs: int, seed: int, **options) -> GridWorldVecEnv:
    return GridWorldVecEnv(task_name, task_id, num_envs, seed, **options)


def describe(task_name: str, **_options) -> EnvSpec:
    validate_task(task_name)
    return EnvSpec((OBS_SIZE,), np.dtype(np.float32), num_actions=NUM_ACTIONS)
