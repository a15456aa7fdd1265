"""PointGoal: a cheap multi-task continuous-control family for learning tests.

A point in the plane moves by its action each step and must reach a task-specific goal:

    p_{t+1} = clip(p_t + STEP * a_t, -1, 1),   a_t in [-1, 1]^2,   r_t = -||p_{t+1} - g||_2

The observation is the position p only, so the tasks differ in nothing the observation shows:
a network shared across tasks (with a task one-hot) gets opposite gradients from opposite
goals ("NE" pulls the policy towards (+, +), "SW" towards (-, -)), which is the gradient
conflict the combiners are about. Episodes start near the origin and are truncated after 50
steps; they never terminate. Pure numpy, microseconds per step; SAC from scratch reaches a
goal within a few thousand env steps.

``import envs`` registers ``PointGoal-<name>-v0`` for every name in ``GOALS``, for env kind
"gym".
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

STEP = 0.1  # distance covered per step at full action: a goal is ~10 steps away
START_RADIUS = 0.1  # start positions uniform in [-START_RADIUS, START_RADIUS]^2
MAX_EPISODE_STEPS = 50
GOALS: dict[str, tuple[float, float]] = {
    "NE": (0.7, 0.7),
    "NW": (-0.7, 0.7),
    "SW": (-0.7, -0.7),
    "SE": (0.7, -0.7),
}


def env_id(name: str) -> str:
    return f"PointGoal-{name}-v0"


TASK_IDS: tuple[str, ...] = tuple(env_id(name) for name in GOALS)


class PointGoalEnv(gym.Env):
    """A point that must reach ``goal``; see the module docstring."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, goal: tuple[float, float]) -> None:
        goal = np.asarray(goal, dtype=np.float64)
        if goal.shape != (2,) or np.abs(goal).max() > 1.0:
            raise ValueError(f"PointGoal goal must be a point in [-1, 1]^2, got {goal}")
        self.goal = goal
        self._pos = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-START_RADIUS, START_RADIUS, 2)
        return self._pos.astype(np.float32), {}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise ValueError(f"PointGoal action must have shape (2,), got {action.shape}")
        self._pos = np.clip(self._pos + STEP * np.clip(action, -1.0, 1.0), -1.0, 1.0)
        distance = float(np.linalg.norm(self._pos - self.goal))
        return self._pos.astype(np.float32), -distance, False, False, {"distance": distance}


def register() -> None:
    """Registers every PointGoal task with gymnasium (idempotent)."""
    for name, goal in GOALS.items():
        if env_id(name) not in gym.registry:
            gym.register(env_id(name), entry_point=PointGoalEnv, kwargs={"goal": goal},
                         max_episode_steps=MAX_EPISODE_STEPS)
