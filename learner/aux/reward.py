"""Reward prediction (paper 001's auxiliary set; UNREAL's reward head in regression form):
predict r_t from (z_t, a_t), loss 0.5 (r̂_t − r_t)². Defined on every step: the reward of the
step that ends an episode is as real as any other."""
from __future__ import annotations

import torch

from learner.aux.base import AuxBatch, AuxTerm, mlp_head, one_hot


class RewardPrediction(AuxTerm):
    def __init__(self, name: str, weight: float, feature_dim: int, num_actions: int, hidden: int):
        super().__init__(name, weight)
        self.num_actions = num_actions
        self.head = mlp_head(feature_dim + num_actions, hidden, 1)

    def per_step(self, batch: AuxBatch):
        z_t = batch.z[:-1]
        a_t = one_hot(batch.actions, self.num_actions, z_t.dtype)
        predicted = self.head(torch.cat([z_t, a_t], dim=-1)).squeeze(-1)   # [T, B]
        loss = 0.5 * (predicted - batch.rewards.to(predicted.dtype)).pow(2)
        return loss, torch.ones_like(loss)
