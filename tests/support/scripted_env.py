"""A gymnasium env whose observations say where they came from, for checking rollout wiring.

Observation of env copy i: [seed mod SEED_MOD, episode, t within the episode, steps since reset].
The first reset's seed (gymnasium's vector env hands copy i the seed `seed + i`) identifies the
copy and the worker's seed; the step counter never restarts, so an observation is unique.
Reward at a step = 10 * (steps since reset before the step) + action, so it pins the action
taken in the observation it was taken in. Episode k of copy i lasts 2 + (i + k) % 3 steps and
ends by termination when k is even, by truncation when k is odd.

``ScriptedCounterBox-v0`` is the same env with continuous actions in [-1, 1]^2 and reward
10 * (steps since reset before the step) + a[0] + a[1] / 4, for SAC's transition worker.

Registered as ``ScriptedCounter-v0`` / ``ScriptedCounterBox-v0`` on import; use the ids
``tests.support.scripted_env:ScriptedCounter-v0`` (``TASK``) and ``BOX_TASK`` so any process
imports this module first.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Discrete

ENV_ID = "ScriptedCounter-v0"
TASK = f"{__name__}:{ENV_ID}"
BOX_ENV_ID = "ScriptedCounterBox-v0"
BOX_TASK = f"{__name__}:{BOX_ENV_ID}"
# The same env under more task names, for multi-task actors.
BOX_TASKS = (BOX_TASK, *(f"{__name__}:ScriptedCounterBox{k}-v0" for k in (2, 3)))
SEED_MOD = 1_000_003  # a prime: it does not divide 2**31 or 2**32, so a wrong wrap shows


def episode_length(seed_offset: int, episode: int) -> int:
    return 2 + (seed_offset + episode) % 3


class ScriptedCounter(gym.Env):
    def __init__(self, num_actions: int = 3, continuous: bool = False):
        self.action_space = Box(-1.0, 1.0, (2,), np.float32) if continuous else Discrete(num_actions)
        self.observation_space = Box(-np.inf, np.inf, (4,), np.float32)
        self.seed_value = -1
        self.episode = -1
        self.t = 0
        self.steps = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.seed_value % SEED_MOD, self.episode, self.t, self.steps], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # the first reset; later (auto)resets come without a seed
            self.seed_value, self.episode, self.steps = seed, -1, 0
        self.episode += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        if isinstance(self.action_space, Box):
            reward = 10.0 * self.steps + float(action[0]) + float(action[1]) / 4
        else:
            reward = 10.0 * self.steps + int(action)
        self.t += 1
        self.steps += 1
        ends = self.t >= episode_length(self.seed_value % SEED_MOD, self.episode)
        terminated = ends and self.episode % 2 == 0
        truncated = ends and self.episode % 2 == 1
        return self._obs(), reward, terminated, truncated, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=ScriptedCounter)
for _box_id in (task.rpartition(":")[2] for task in BOX_TASKS):
    if _box_id not in gym.registry:
        gym.register(_box_id, entry_point=ScriptedCounter, kwargs={"continuous": True})
