"""Self-supervised dynamics losses on the torso's features (paper 001's auxiliary set).

    inverse dynamics:  predict a_t from (z_t, z_{t+1});   cross-entropy with the taken action
    forward dynamics:  predict z_{t+1} from (z_t, a_t);   0.5 * mean_j (ẑ_{t+1,j} − z_{t+1,j})²

Forward dynamics is learned in latent space (the issue's and paper 001's choice) with the
target z_{t+1} held fixed (no gradient through the target), so the torso is shaped only by
how predictable its next features are from the current ones, as in curiosity-style models.
Both are defined only for real transitions (`transition_mask`).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from learner.aux.base import AuxBatch, AuxTerm, mlp_head, one_hot, transition_mask


class InverseDynamics(AuxTerm):
    def __init__(self, name: str, weight: float, feature_dim: int, num_actions: int, hidden: int):
        super().__init__(name, weight)
        self.head = mlp_head(2 * feature_dim, hidden, num_actions)

    def per_step(self, batch: AuxBatch):
        z_t, z_next = batch.z[:-1], batch.z[1:]
        logits = self.head(torch.cat([z_t, z_next], dim=-1))           # [T, B, A]
        loss = F.cross_entropy(logits.flatten(0, 1), batch.actions.flatten().long(),
                               reduction="none").view(batch.actions.shape)
        return loss, transition_mask(batch)


class ForwardDynamics(AuxTerm):
    def __init__(self, name: str, weight: float, feature_dim: int, num_actions: int, hidden: int):
        super().__init__(name, weight)
        self.num_actions = num_actions
        self.head = mlp_head(feature_dim + num_actions, hidden, feature_dim)

    def per_step(self, batch: AuxBatch):
        z_t, target = batch.z[:-1], batch.z[1:].detach()
        a_t = one_hot(batch.actions, self.num_actions, z_t.dtype)
        predicted = self.head(torch.cat([z_t, a_t], dim=-1))            # [T, B, d]
        loss = 0.5 * (predicted - target).pow(2).mean(-1)
        return loss, transition_mask(batch)
