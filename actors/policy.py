"""The CPU copy of SAC's policy that a transition worker acts with.

It loads the learner's published `actor_weights()` and knows their version. (IMPALA's
rollout worker acts with its actor-critic directly: actors/rollout.py.)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.actor_critic import model_from_config
from models.sac import build_sac_actor


def policy_network(cfg, spec) -> torch.nn.Module:
    """The network rollout actors and evaluation act with, the one the learner's
    `actor_weights()` fill: IMPALA's actor-critic or SAC's tanh-Gaussian actor."""
    if cfg.learner.algorithm == "sac":
        sac = cfg.learner.sac
        return build_sac_actor(sac.model, math.prod(spec.obs_shape), spec.action_dim,
                               len(cfg.env.tasks), sac.hidden)
    return model_from_config(cfg, spec.obs_shape, spec.num_actions)


class GaussianPolicy:
    """SAC's tanh-Gaussian actor; actions in [-1, 1]^A. Until the learner publishes its first
    update (version 0 is the untrained network), actions are uniform at random, as SAC's
    warm-up prescribes, so the replay does not start out filled by one arbitrary policy."""

    def __init__(self, cfg, spec, seed: int):
        self.model = policy_network(cfg, spec).eval()
        self.action_dim = spec.action_dim
        self.version = -1
        self.generator = torch.Generator().manual_seed(seed)

    def set_weights(self, version: int, weights: dict[str, np.ndarray]) -> None:
        self.model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
        self.version = version

    @property
    def warming_up(self) -> bool:
        return self.version <= 0

    @torch.inference_mode()
    def act(self, obs: np.ndarray, task_ids: torch.Tensor, deterministic: bool = False) -> np.ndarray:
        if self.warming_up and not deterministic:
            shape = (obs.shape[0], self.action_dim)
            return (torch.rand(shape, generator=self.generator) * 2 - 1).numpy()
        action = self.model.act(torch.from_numpy(obs), task_ids, deterministic=deterministic,
                                generator=self.generator)
        return action.numpy()
