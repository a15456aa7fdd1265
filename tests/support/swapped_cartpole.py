"""CartPole with its two actions swapped: same spaces and dynamics as CartPole-v1, the opposite
policy. Two tasks that share a torso but want opposite action mappings really conflict, unlike
CartPole-v1 and -v0, which differ only in their time limit.

Registered as ``CartPoleSwapped-v1`` on import; configs name it
``tests.support.swapped_cartpole:CartPoleSwapped-v1`` so that every process (Ray workers too)
imports this module before making the env.
"""
from __future__ import annotations

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

ENV_ID = "CartPoleSwapped-v1"
TASK = f"{__name__}:{ENV_ID}"


class SwappedCartPole(gym.ActionWrapper):
    metadata = CartPoleEnv.metadata  # gymnasium.make reads it from the entry point class

    def __init__(self, **kwargs):
        super().__init__(CartPoleEnv(**kwargs))

    def action(self, action):
        return 1 - int(action)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=SwappedCartPole, max_episode_steps=500, reward_threshold=475.0)
