"""Auxiliary losses for the IMPALA learner (`learner.aux`): each a named `aux/<name>` term
with its own small head on the shared torso (see `base.py`).

    distill            KL from a frozen teacher policy (paper 000)
    inverse_dynamics   a_t from (z_t, z_{t+1})         (paper 001's set)
    forward_dynamics   z_{t+1} from (z_t, a_t)         (paper 001's set)
    reward             r_t from (z_t, a_t)             (paper 001's set)
    autoencoder        x_t from z_t                    (paper 001's set)
"""
from __future__ import annotations

import torch
from torch import nn

from envs.gridworld_teacher import RECORDED_TEACHERS
from learner.aux.autoencoder import Autoencoder
from learner.aux.base import AuxBatch, AuxTerm
from learner.aux.distill import Distill
from learner.aux.dynamics import ForwardDynamics, InverseDynamics
from learner.aux.reward import RewardPrediction

# The kinds build_aux_terms builds; accord/config.py validates `learner.aux.<name>.kind`
# against its own copy (the launcher sits above this package), held equal by a unit test.
AUX_KINDS = ("distill", "inverse_dynamics", "forward_dynamics", "reward", "autoencoder")

def build_aux_terms(cfg, spec, feature_dim: int, device: torch.device) -> nn.ModuleDict:
    """The terms of `cfg.learner.aux`, in config order, keyed by their names."""
    terms = nn.ModuleDict()
    for name, acfg in cfg.learner.aux.items():
        kind = acfg.kind or name
        if kind == "distill":
            term = Distill(name, acfg.weight, teacher=acfg.teacher, temperature=acfg.temperature,
                           tasks=acfg.tasks, student_tasks=list(cfg.env.tasks),
                           num_actions=spec.num_actions, obs_shape=spec.obs_shape, device=device)
        elif kind == "inverse_dynamics":
            term = InverseDynamics(name, acfg.weight, feature_dim, spec.num_actions, acfg.hidden)
        elif kind == "forward_dynamics":
            term = ForwardDynamics(name, acfg.weight, feature_dim, spec.num_actions, acfg.hidden)
        elif kind == "reward":
            term = RewardPrediction(name, acfg.weight, feature_dim, spec.num_actions, acfg.hidden)
        elif kind == "autoencoder":
            term = Autoencoder(name, acfg.weight, feature_dim, spec.obs_shape, acfg.hidden)
        else:
            raise ValueError(f"learner.aux.{name}: unknown kind {kind!r}; expected one of {AUX_KINDS}")
        terms[name] = term
    return terms.to(device)


def reduce_term(loss: torch.Tensor, mask: torch.Tensor, columns, reduction: str) -> torch.Tensor:
    """Sum (or mean) of the per-step `loss` over the unmasked steps of `columns`, like V-trace's."""
    loss, mask = loss[:, columns], mask[:, columns]
    total = (loss * mask).sum()
    if reduction == "mean":
        total = total / mask.sum().detach().clamp_min(1.0)
    return total


__all__ = ["AUX_KINDS", "AuxBatch", "AuxTerm", "RECORDED_TEACHERS", "build_aux_terms",
           "reduce_term"]
