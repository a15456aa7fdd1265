"""What every auxiliary loss reads, and how its per-step values become one loss term.

An auxiliary term is a small `nn.Module` (its head; the distillation term has none) whose
`per_step(batch)` returns the loss of every step `[T, B]` and the mask of steps where it is
defined. The learner reduces it the way it reduces V-trace (`learner.loss_reduction`: summed
over steps, or their mean), scales it by the term's `weight` and hands it to the combiner as
`aux/<name>`. Heads read the torso features `z` of the same forward pass that the policy
uses, so an aux gradient reaches the shared torso through `z`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class AuxBatch:
    """One batch of unrolls as the auxiliary losses see it (time-major, on the learner device).

    obs: x_0..x_T [T+1, B, ...]; z: torso features of obs [T+1, B, d] (with gradient);
    logits: the student's policy logits for x_0..x_{T-1} [T, B, A] (with gradient);
    actions a_t [T, B]; rewards r_t [T, B]; episode_end [T, B] (step t ended an episode, so
    x_{t+1} already starts the next one); task_id [B]; teacher_probs: per aux name, the
    teacher's action probabilities recorded by the actors [T, B, A] (env teachers only).
    """

    obs: torch.Tensor
    z: torch.Tensor
    logits: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    episode_end: torch.Tensor
    task_id: torch.Tensor
    teacher_probs: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_actions(self) -> int:
        return self.logits.shape[-1]


class AuxTerm(nn.Module):
    """Base class: `per_step(batch) -> (loss [T, B], mask [T, B] float)`.

    Parameters of the module are the term's own head: they get this term's gradient only.
    """

    def __init__(self, name: str, weight: float):
        super().__init__()
        self.name = name
        self.weight = float(weight)

    def per_step(self, batch: AuxBatch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def transition_mask(batch: AuxBatch) -> torch.Tensor:
    """1 where (x_t, a_t, x_{t+1}) is a real transition: an episode end resets the env, so the
    observation after it belongs to another episode and predicting it would teach noise."""
    return (~batch.episode_end).to(batch.z.dtype)


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The small two-layer head every aux term uses (ReLU, as the torsos' last layer)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def one_hot(actions: torch.Tensor, num_actions: int, dtype: torch.dtype) -> torch.Tensor:
    return nn.functional.one_hot(actions.long(), num_actions).to(dtype)
