"""A uniformly random policy's mean episode return on the main task of sampled gridworlds: the
floor of tests/learning/test_aux.py's comparison (its RANDOM_RETURN).

    .venv/bin/python -m tests.support.random_gridworld_return 0 1 2 3 4 5 6 7

Each world: 20,000 episodes of 64 envs stepped through GridWorldVecEnv (the env the runs train
on) with uniform actions; prints the mean and its standard error.
"""
from __future__ import annotations

import sys

import numpy as np

from envs.gridworld import NUM_ACTIONS, GridWorldVecEnv

EPISODES, ENVS = 20_000, 64
# What the command above printed on 2026-12-05 (standard errors 0.007-0.052).
RANDOM_RETURN = {0: 1.03, 1: -0.55, 2: -3.72, 3: -2.97, 4: -2.87, 5: -5.09, 6: 4.80, 7: -0.35}


def random_return(world: int, episodes: int = EPISODES, seed: int = 0) -> tuple[float, float]:
    """(mean, standard error) of the episode returns of uniform actions on world-<world>-main."""
    env = GridWorldVecEnv(f"world-{world}-main", 0, ENVS, seed=seed)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    while len(returns) < episodes:
        returns += [episode.score for episode in env.step(rng.integers(0, NUM_ACTIONS, ENVS)).episodes]
    scores = np.asarray(returns[:episodes])
    return float(scores.mean()), float(scores.std() / np.sqrt(len(scores)))


if __name__ == "__main__":
    for world in map(int, sys.argv[1:]):
        mean, stderr = random_return(world)
        print(f"world-{world}-main: {mean:.2f} (standard error {stderr:.3f})", flush=True)
