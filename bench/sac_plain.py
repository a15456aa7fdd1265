"""The SAC update written plainly, the floor that `accord bench sac` measures accord's update
against: the same networks, the same batch and the same arithmetic, as a single-file SAC (CleanRL's)
writes it, with nothing of what the learner adds around it (no combiner, no metrics, no
non-finite guard, no static buffers).

    target a′ ~ π(·|s′), y from the target critics (no gradient)
    critic: Σ_k J_Q,k, one backward, Adam
    actor:  Σ_k J_π,k, autograd asked for the actor's gradients only (as the learner does: a
            plain `backward()` would also compute the critics' weight gradients, more arithmetic
            than the update needs), Adam
    α:      Σ_k J(α_k), Adam
    Polyak: one foreach lerp

It starts from copies of a `SacLearner`'s networks and draws its noise as `SacLearner.step`
does, so from the same seed one plain update gives the learner's weights (tested).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from learner.sac.learner import SacLearner


class PlainSacUpdate:
    compile_mode = "off"   # what the benchmark's warm-up reads of a learner

    def __init__(self, learner: SacLearner):
        s = learner.scfg
        self.device = learner.device
        self.actor = copy.deepcopy(learner.actor)
        self.critic = copy.deepcopy(learner.critic)
        self.critic_target = copy.deepcopy(learner.critic_target)
        self.log_alpha = torch.nn.Parameter(learner.log_alpha.detach().clone())
        self.discount, self.tau, self.reward_scale = learner.lcfg.discount, s.tau, s.reward_scale
        self.target_entropy = learner.target_entropy
        self.task_ids = torch.arange(learner.num_tasks, device=self.device)
        adam = dict(fused=True)   # as the learner's: one kernel per step
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=s.critic_lr, **adam)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=s.actor_lr, **adam)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=s.alpha_lr, **adam)
        self.actor_params = list(self.actor.parameters())
        self.target_params = list(self.critic_target.parameters())
        self.online_params = list(self.critic.parameters())

    def _tensor(self, batch: dict, key: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(batch[key])).to(self.device)

    def step(self, batch: dict) -> None:
        obs, next_obs = self._tensor(batch, "obs"), self._tensor(batch, "next_obs")
        action, reward = self._tensor(batch, "action"), self._tensor(batch, "reward")
        not_done = 1.0 - self._tensor(batch, "terminated").float()
        k = self.task_ids
        K, n, A = action.shape
        noise_next = torch.randn(K, n, A, device=self.device)
        noise_pi = torch.randn(K, n, A, device=self.device)
        alpha = self.log_alpha.detach().exp()[:, None]              # α_k against [K, n] rows

        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(next_obs, k, noise_next)
            next_q1, next_q2 = self.critic_target(next_obs, next_action, k)
            y = self.reward_scale * reward + self.discount * not_done * (
                torch.minimum(next_q1, next_q2) - alpha * next_log_prob)
        q1, q2 = self.critic(obs, action, k)
        critic_loss = ((q1 - y).pow(2).mean(-1) + (q2 - y).pow(2).mean(-1)).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        pi_action, log_prob = self.actor.sample(obs, k, noise_pi)
        q1, q2 = self.critic(obs, pi_action, k)
        actor_loss = (alpha * log_prob - torch.minimum(q1, q2)).mean(-1).sum()
        for p, g in zip(self.actor_params, torch.autograd.grad(actor_loss, self.actor_params)):
            p.grad = g
        self.actor_optimizer.step()

        entropy_gap = log_prob.detach() + self.target_entropy
        alpha_loss = -(self.log_alpha[:, None] * entropy_gap).mean(-1).sum()
        self.log_alpha.grad = torch.autograd.grad(alpha_loss, self.log_alpha)[0]
        self.alpha_optimizer.step()

        with torch.no_grad():
            torch._foreach_lerp_(self.target_params, self.online_params, self.tau)

    def read_metrics(self) -> dict[str, float]:
        return {}   # it keeps none: the floor the learner's metrics are measured against
