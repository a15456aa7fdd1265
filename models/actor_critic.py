"""The discrete actor-critic of IMPALA: a shared torso and per-task (or one shared) policy
and value heads. Actors run it to act, the IMPALA learner trains it.

The split between shared and task-specific parameters is explicit because the combiners
(`combiners/`) act on the shared ones only; heads get their own task's gradient untouched.
"""
from __future__ import annotations

import torch
from torch import nn

from models.torsos import make_torso


class ActorCritic(nn.Module):
    """Shared torso; policy logits and value from per-task heads (or one head for all tasks).

    forward(obs [N, ...], task_id [N]) -> (logits [N, A], values [N]).
    """

    def __init__(self, torso: nn.Module, num_actions: int, num_tasks: int = 1,
                 per_task_heads: bool = False):
        super().__init__()
        self.torso = torso
        self.num_actions = num_actions
        self.num_heads = num_tasks if per_task_heads else 1
        d = torso.output_dim
        # One fused linear per head: A logits and 1 value.
        self.heads = nn.ModuleList(nn.Linear(d, num_actions + 1) for _ in range(self.num_heads))

    def forward(self, obs: torch.Tensor, task_id: torch.Tensor | None = None):
        return self.heads_from(self.torso(obs), task_id)

    def heads_from(self, z: torch.Tensor, task_id: torch.Tensor | None = None):
        """(logits, values) from torso features `z` [N, d]; auxiliary heads read the same z."""
        if self.num_heads == 1:
            out = self.heads[0](z)
        else:
            all_out = torch.stack([h(z) for h in self.heads], dim=1)  # [N, H, A+1]
            idx = task_id.long().view(-1, 1, 1).expand(-1, 1, all_out.shape[-1])
            out = all_out.gather(1, idx).squeeze(1)
        return out[:, :-1], out[:, -1]

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.torso.parameters()) + (
            list(self.heads.parameters()) if self.num_heads == 1 else [])

    def task_parameters(self) -> list[list[nn.Parameter]]:
        """Per-task head parameters; empty when the head is shared."""
        return [] if self.num_heads == 1 else [list(h.parameters()) for h in self.heads]


def build_model(name: str, obs_shape, num_actions: int, num_tasks: int = 1,
                per_task_heads: bool = False) -> ActorCritic:
    return ActorCritic(make_torso(name, tuple(obs_shape)), num_actions, num_tasks, per_task_heads)
