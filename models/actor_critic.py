"""The discrete actor-critic of IMPALA: a shared torso and per-task (or one shared) policy
and value heads. Actors run it to act, the IMPALA learner trains it.

The split between shared and task-specific parameters is explicit because the combiners
(`combiners/`) act on the shared ones only; heads get their own task's gradient untouched.

`vf_share_layers` (RLlib's name): True is IMPALA's network, one torso under a fused policy and
value head; False gives the value its own torso of the same kind, as paper 000's gridworld
(App. F: policy logits and a separate baseline) and CleanRL's continuous-control agents do.
Then the policy's gradient and the value's live on different weights, so a combiner comparing
a policy-side aux term with the main loss sees the policy gradient alone on the shared torso.
"""
from __future__ import annotations

import torch
from torch import nn

from models.torsos import make_torso


def _select(heads: nn.ModuleList, z: torch.Tensor, task_id: torch.Tensor | None) -> torch.Tensor:
    """Row i from head task_id[i] (or the one head for all)."""
    if len(heads) == 1:
        return heads[0](z)
    all_out = torch.stack([h(z) for h in heads], dim=1)  # [N, H, out]
    idx = task_id.long().view(-1, 1, 1).expand(-1, 1, all_out.shape[-1])
    return all_out.gather(1, idx).squeeze(1)


class ActorCritic(nn.Module):
    """Shared torso; policy logits and value from per-task heads (or one head for all tasks).

    forward(obs [N, ...], task_id [N]) -> (logits [N, A], values [N]).
    """

    def __init__(self, torso: nn.Module, num_actions: int, num_tasks: int = 1,
                 per_task_heads: bool = False, value_torso: nn.Module | None = None):
        super().__init__()
        self.torso = torso
        self.num_actions = num_actions
        self.num_heads = num_tasks if per_task_heads else 1
        d = torso.output_dim
        # With a shared torso, one fused linear per head gives A logits and 1 value.
        fused = value_torso is None
        self.heads = nn.ModuleList(nn.Linear(d, num_actions + fused) for _ in range(self.num_heads))
        self.value_torso = value_torso
        if not fused:
            self.value_heads = nn.ModuleList(nn.Linear(value_torso.output_dim, 1)
                                             for _ in range(self.num_heads))

    def forward(self, obs: torch.Tensor, task_id: torch.Tensor | None = None):
        _, logits, values = self.features_and_outputs(obs, task_id)
        return logits, values

    def features_and_outputs(self, obs: torch.Tensor, task_id: torch.Tensor | None = None):
        """(z, logits, values): the policy torso's features `z` [N, d] (aux heads read them)."""
        z = self.torso(obs)
        out = _select(self.heads, z, task_id)
        if self.value_torso is None:
            return z, out[:, :-1], out[:, -1]
        return z, out, _select(self.value_heads, self.value_torso(obs), task_id)[:, 0]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task uses: torsos, and heads when there is one for all tasks."""
        shared = list(self.torso.parameters())
        if self.value_torso is not None:
            shared += list(self.value_torso.parameters())
        if self.num_heads == 1:
            shared += [p for h in self._head_lists() for p in h[0].parameters()]
        return shared

    def task_parameters(self) -> list[list[nn.Parameter]]:
        """Per-task head parameters; empty when the head is shared."""
        if self.num_heads == 1:
            return []
        return [[p for h in self._head_lists() for p in h[k].parameters()]
                for k in range(self.num_heads)]

    def value_parameters(self) -> list[nn.Parameter]:
        """The value's own weights (empty with a shared torso): only the V-trace loss reaches them."""
        if self.value_torso is None:
            return []
        return list(self.value_torso.parameters()) + list(self.value_heads.parameters())

    def _head_lists(self) -> list[nn.ModuleList]:
        return [self.heads] if self.value_torso is None else [self.heads, self.value_heads]


def build_model(name: str, obs_shape, num_actions: int, num_tasks: int = 1,
                per_task_heads: bool = False, vf_share_layers: bool = True) -> ActorCritic:
    obs_shape = tuple(obs_shape)
    value_torso = None if vf_share_layers else make_torso(name, obs_shape)
    return ActorCritic(make_torso(name, obs_shape), num_actions, num_tasks, per_task_heads,
                       value_torso)


def model_from_config(cfg, obs_shape, num_actions: int) -> ActorCritic:
    """The actor-critic a run's config describes (learner.model, heads, value torso)."""
    return build_model(cfg.learner.model, obs_shape, num_actions, len(cfg.env.tasks),
                       cfg.learner.per_task_heads, cfg.learner.vf_share_layers)
