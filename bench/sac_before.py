"""The SAC update as accord ran it before the update became a device program, kept as the
benchmark's baseline so that `accord bench sac` measures the two side by side in one run.

Same math as `SacLearner`, run the old way: the K task losses from a vmapped pass even when the
combiner's weights are fixed, the actor's critics through a per-call `functional_call`, the
twin critics' target through vmap, Adam without fusing, one Polyak `lerp_` per tensor, the
non-finite checks and ~50 metrics read back to Python floats inside every update (each read
waits for the device), and the batch built from NumPy inside the update.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from combiners import apply_task_split
from learner.sac.learner import SacLearner
from learner.sac.loss import actor_loss, alpha_loss


class HostSyncedSacLearner(SacLearner):
    def __init__(self, cfg, spec, device: str = "cpu"):
        super().__init__(cfg, spec, device)
        s = self.scfg
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=s.critic_lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=s.actor_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=s.alpha_lr)

    def _tensors(self, batch: dict) -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(np.asarray(batch[k])).to(self.device)
               for k in ("obs", "action", "reward", "next_obs", "terminated")}
        out["terminated"] = out["terminated"].bool()
        return out

    def _frozen_actor_loss(self, frozen, actor, obs, k, noise, alpha):
        action, log_prob = actor.sample(obs, k, noise)
        q1, q2 = torch.func.functional_call(self.critic, frozen, (obs, action, k))
        terms = actor_loss(log_prob, q1, q2, alpha)
        return terms["actor"], {"loss": terms["actor"].detach(), "log_prob": log_prob.detach()}

    def _split(self, split, combiner, loss_fn, batches):
        return apply_task_split(combiner, split.model, loss_fn, batches, split.shared,
                                split.heads, names=self.tasks, has_aux=True)

    def step(self, batch: dict) -> None:
        self.update(batch)

    def read_metrics(self) -> dict[str, float]:
        return {}      # already read, inside every update

    def update(self, batch: dict) -> dict[str, float]:
        b = self._tensors(batch)
        K, n, A = self.num_tasks, b["reward"].shape[1], self.action_dim
        k = self._task_ids
        noise_next = torch.randn(K, n, A, device=self.device)
        noise_pi = torch.randn(K, n, A, device=self.device)
        alpha = self.log_alpha.detach().exp()
        metrics = {f"sac/alpha/{t}": float(a) for t, a in zip(self.tasks, alpha.tolist())}
        with torch.no_grad():
            next_action, next_log_prob = torch.func.vmap(self.actor.sample)(b["next_obs"], k, noise_next)
            next_q1, next_q2 = torch.func.vmap(self.critic_target)(b["next_obs"], next_action, k)
        self.critic_optimizer.zero_grad(set_to_none=True)
        stats, aux = self._split(self._critic_split, self.critic_combiner, self._critic_task_loss,
                                 (b["obs"], k, b["action"], b["reward"], b["terminated"],
                                  next_q1, next_q2, next_log_prob, alpha[:, None]))
        metrics.update({f"loss/critic/{t}": v for t, v in zip(self.tasks, aux["loss"].tolist())})
        metrics.update({f"combiner/critic/{s}": float(v) for s, v in stats.items()})
        metrics["sac/q_mean"] = float(aux["q_mean"].mean())
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.critic.parameters()]))
        metrics["learner/grad_norm/critic"] = float(norm)
        if not (torch.isfinite(aux["loss"]).all() and torch.isfinite(norm)):
            return metrics
        self.critic_optimizer.step()
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        self.actor_optimizer.zero_grad(set_to_none=True)
        stats, aux = self._split(self._actor_split, self.actor_combiner,
                                 functools.partial(self._frozen_actor_loss, frozen),
                                 (b["obs"], k, noise_pi, alpha[:, None]))
        log_prob = aux["log_prob"]
        metrics.update({f"loss/actor/{t}": v for t, v in zip(self.tasks, aux["loss"].tolist())})
        metrics.update({f"sac/entropy/{t}": v for t, v in zip(self.tasks, (-log_prob.mean(1)).tolist())})
        metrics.update({f"combiner/actor/{s}": float(v) for s, v in stats.items()})
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.actor.parameters()]))
        metrics["learner/grad_norm/actor"] = float(norm)
        if not (torch.isfinite(aux["loss"]).all() and torch.isfinite(norm)):
            return metrics
        self.actor_optimizer.step()
        terms = torch.func.vmap(alpha_loss, in_dims=(0, 0, None))(self.log_alpha, log_prob,
                                                                  self.target_entropy)
        metrics.update({f"loss/alpha/{t}": v for t, v in zip(self.tasks, terms["alpha"].tolist())})
        self.alpha_optimizer.zero_grad(set_to_none=True)
        terms["alpha"].sum().backward()
        if not torch.isfinite(self.log_alpha.grad).all():
            return metrics
        self.alpha_optimizer.step()
        with torch.no_grad():
            for target, online in zip(self.critic_target.parameters(), self.critic.parameters()):
                target.lerp_(online, self.scfg.tau)
        self.steps += 1
        return metrics
