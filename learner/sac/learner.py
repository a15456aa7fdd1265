"""The multi-task SAC learner step, top to bottom (Haarnoja et al., 2018, with the per-task
temperature and the per-task gradient combination of papers 003 (PCGrad) and 004 (D-Grad)):

    task-balanced batch [K, n, ...] -> target a′ ~ π(·|s′), min_j Q̄_j(s′, a′)   (no gradient)
    -> critic step: K task losses J_Q,k -> combiner on the critics' shared weights -> Adam
    -> actor step:  K task losses J_π,k (critics held fixed) -> its own combiner -> Adam
    -> α step:      J(α_k) per task on a [K] log α -> Adam
    -> Polyak:      Q̄ <- (1 − τ) Q̄ + τ Q

Task k's losses read only its own rows, so `apply_task_split` gets the K per-task gradients on
the shared weights from one vmapped pass (one backward of Σ_k J_k when the combiner's weights
are fixed, as with `sum`, the MT-SAC baseline). Per-task parameters (multi-head output layers,
D-Grad (A)'s task networks) get their own task's gradient untouched. The Gaussian noise of both
samples is drawn before the passes, so each task's loss is a deterministic function of its
slice (and the combined gradient can be checked against a per-task loop).

`SacLearner` is a plain class (no Ray) implementing `learner.algorithm.Algorithm`; its state
(`state_dict()` / `load_state_dict()`) makes save -> load -> continue bit-identical on CPU.
"""
from __future__ import annotations

import copy
import functools
import math

import numpy as np
import torch
from torch import nn

from combiners import apply_task_split, make_combiner, task_split_losses
from learner.algorithm import NonFiniteGuard, rng_state, set_rng_state
from learner.sac.loss import actor_loss, alpha_loss, critic_loss
from models.sac import build_sac_actor, build_sac_critic

_BATCH_KEYS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


class _TaskSplit:
    """How one network's K task losses reach `.grad`: shared names for the combiner and each
    task's own parameter names.

    Task-specific gradients ride in the same vmapped pass as the shared ones when that at most
    doubles G[K, ·] (multi-head output layers). D-Grad (A)'s task networks hold K·n² weights
    per layer, so that pass would build K² n² numbers per layer; they take one extra backward
    of Σ_k J_k instead, which gives each task network exactly its own task's gradient.
    """

    def __init__(self, model: nn.Module, task_names: list[str]):
        names = {id(p): n for n, p in model.named_parameters()}
        self.model = model
        self.task_names = task_names
        self.shared = [names[id(p)] for p in model.shared_parameters()]
        heads = model.task_parameters()
        self.head_params = heads
        self.heads = {t: [names[id(p)] for p in heads[k]] for k, t in enumerate(task_names)} \
            if heads else None
        shared_size = sum(p.numel() for p in model.shared_parameters())
        head_size = sum(p.numel() for ps in heads for p in ps)
        self.heads_in_pass = head_size <= shared_size

    def apply(self, combiner, loss_fn, batches) -> tuple[dict, dict]:
        """Write every `.grad` of the model; return the combiner's stats and the stacked aux."""
        separate = (self.heads is not None and not self.heads_in_pass
                    and combiner.fixed_weights(len(self.task_names)) is None)
        stats, aux = apply_task_split(
            combiner, self.model, loss_fn, batches, self.shared,
            None if separate else self.heads, names=self.task_names, has_aux=True)
        if separate:
            L, _ = task_split_losses(self.model, loss_fn, batches, has_aux=True)
            params = [p for ps in self.head_params for p in ps]
            for p, g in zip(params, torch.autograd.grad(L.sum(), params)):
                p.grad = g
        return stats, aux


def _grad_norm(params) -> torch.Tensor:
    norms = [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms))


class SacLearner:
    def __init__(self, cfg, spec, device: str = "cpu"):
        if spec.action_dim is None:
            raise ValueError("learner.algorithm 'sac' needs continuous (Box) actions; the env has "
                             f"{spec.num_actions} discrete actions")
        if len(spec.obs_shape) != 1:
            raise ValueError(f"SAC's networks read vector observations; got shape {spec.obs_shape}")
        self.cfg, self.lcfg, self.scfg = cfg, cfg.learner, cfg.learner.sac
        self.device = torch.device(device)
        self.tasks = [str(t) for t in cfg.env.tasks]
        K, obs_dim, A = len(self.tasks), int(spec.obs_shape[0]), int(spec.action_dim)
        self.num_tasks, self.obs_dim, self.action_dim = K, obs_dim, A
        s = self.scfg
        self.actor = build_sac_actor(s.model, obs_dim, A, K, s.hidden).to(self.device)
        self.critic = build_sac_critic(s.model, obs_dim, A, K, s.hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((K,), math.log(s.init_alpha), device=self.device))
        self.target_entropy = float(-A if s.target_entropy is None else s.target_entropy)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=s.critic_lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=s.actor_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=s.alpha_lr)
        ccfg = self.lcfg.combiner
        # PCGrad treats the critic and the actor separately (paper 003, §4; paper 004, §4.3).
        self.critic_combiner = make_combiner(ccfg.name, **ccfg.options)
        self.actor_combiner = make_combiner(ccfg.name, **ccfg.options)
        self._critic_split = _TaskSplit(self.critic, self.tasks)
        self._actor_split = _TaskSplit(self.actor, self.tasks)
        self._task_ids = torch.arange(K, device=self.device)
        self.updates = 0
        self.frames = 0
        self.nonfinite = NonFiniteGuard(self.lcfg.max_nonfinite_run)
        self._metric_sums: dict[str, float] = {}
        self._metric_counts: dict[str, int] = {}

    def step(self, batch: dict) -> None:
        for key, value in self.update(batch).items():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + value
            self._metric_counts[key] = self._metric_counts.get(key, 0) + 1

    def read_metrics(self) -> dict[str, float]:
        out = {k: v / self._metric_counts[k] for k, v in self._metric_sums.items()}
        self._metric_sums, self._metric_counts = {}, {}
        return out

    @property
    def nonfinite_total(self) -> int:
        return self.nonfinite.total

    # ---------------------------------------------------------------- data
    def _tensors(self, batch: dict) -> dict[str, torch.Tensor]:
        missing = [k for k in (*_BATCH_KEYS, "inserted") if k not in batch]
        if missing:
            raise ValueError(f"SAC batch lacks {missing}; it has {sorted(batch)}")
        out = {k: torch.as_tensor(np.asarray(batch[k])).to(self.device) for k in _BATCH_KEYS}
        K, D, A = self.num_tasks, self.obs_dim, self.action_dim
        n = out["reward"].shape[1] if out["reward"].dim() == 2 else -1
        expected = {"obs": (K, n, D), "action": (K, n, A), "reward": (K, n),
                    "next_obs": (K, n, D), "terminated": (K, n), "truncated": (K, n)}
        wrong = {k: tuple(out[k].shape) for k in expected if tuple(out[k].shape) != expected[k]}
        if n < 1 or wrong:
            raise ValueError(f"SAC batch must be task-major [K={K}, n, ...] with obs dim {D} and "
                             f"action dim {A}; got shapes {wrong or {'reward': out['reward'].shape}}")
        for k in ("obs", "action", "reward", "next_obs"):
            out[k] = out[k].float()
        out["terminated"] = out["terminated"].bool()
        return out

    # ---------------------------------------------------------------- per-task losses
    def _critic_task_loss(self, critic, obs, action, k, reward, terminated, next_q1, next_q2,
                          next_log_prob, alpha):
        q1, q2 = critic(obs, action, k)
        terms = critic_loss(q1, q2, reward, terminated, next_q1, next_q2, next_log_prob, alpha,
                            discount=self.lcfg.discount, reward_scale=self.scfg.reward_scale)
        return terms["critic"], {"loss": terms["critic"].detach(),
                                 "q_mean": 0.5 * (terms["stats/q1"] + terms["stats/q2"])}

    def _actor_task_loss(self, frozen_critic, actor, obs, k, noise, alpha):
        action, log_prob = actor.sample(obs, k, noise)
        # The critics are constants here: detached weights, so no gradient reaches them.
        q1, q2 = torch.func.functional_call(self.critic, frozen_critic, (obs, action, k))
        terms = actor_loss(log_prob, q1, q2, alpha)
        return terms["actor"], {"loss": terms["actor"].detach(), "log_prob": log_prob.detach()}

    # ---------------------------------------------------------------- the step
    def update(self, batch: dict) -> dict[str, float]:
        """One SAC step on a task-major batch; returns metrics (partial when skipped)."""
        b = self._tensors(batch)
        self.frames = int(batch["inserted"])
        K, n, A = self.num_tasks, b["reward"].shape[1], self.action_dim
        k = self._task_ids
        noise_next = torch.randn(K, n, A, device=self.device)   # a′ ~ π(·|s′)
        noise_pi = torch.randn(K, n, A, device=self.device)     # ã ~ π(·|s)
        alpha = self.log_alpha.detach().exp()
        metrics = {f"sac/alpha/{t}": float(a) for t, a in zip(self.tasks, alpha.tolist())}

        # ---- critic: J_Q per task, combined on the shared critic weights
        with torch.no_grad():
            next_action, next_log_prob = torch.func.vmap(self.actor.sample)(
                b["next_obs"], k, noise_next)
            next_q1, next_q2 = torch.func.vmap(self.critic_target)(b["next_obs"], next_action, k)
        self.critic_optimizer.zero_grad(set_to_none=True)
        stats, aux = self._critic_split.apply(
            self.critic_combiner, self._critic_task_loss,
            (b["obs"], b["action"], k, b["reward"], b["terminated"], next_q1, next_q2,
             next_log_prob, alpha))
        metrics.update({f"loss/critic/{t}": v for t, v in zip(self.tasks, aux["loss"].tolist())})
        metrics.update({f"combiner/critic/{s}": v for s, v in stats.items()})
        metrics["sac/q_mean"] = float(aux["q_mean"].mean())
        grad_norm = _grad_norm(self.critic.parameters())
        metrics["learner/grad_norm/critic"] = float(grad_norm)
        if not (torch.isfinite(aux["loss"]).all() and torch.isfinite(grad_norm)):
            self.critic_optimizer.zero_grad(set_to_none=True)
            return self._skip_nonfinite(metrics, "critic", aux["loss"], grad_norm)
        self.critic_optimizer.step()

        # ---- actor: J_π per task with the updated critics held fixed
        frozen_critic = {name: p.detach() for name, p in self.critic.named_parameters()}
        self.actor_optimizer.zero_grad(set_to_none=True)
        stats, aux = self._actor_split.apply(
            self.actor_combiner, functools.partial(self._actor_task_loss, frozen_critic),
            (b["obs"], k, noise_pi, alpha))
        log_prob = aux["log_prob"]                                  # [K, n], detached
        metrics.update({f"loss/actor/{t}": v for t, v in zip(self.tasks, aux["loss"].tolist())})
        metrics.update({f"sac/entropy/{t}": v
                        for t, v in zip(self.tasks, (-log_prob.mean(dim=1)).tolist())})
        metrics.update({f"combiner/actor/{s}": v for s, v in stats.items()})
        grad_norm = _grad_norm(self.actor.parameters())
        metrics["learner/grad_norm/actor"] = float(grad_norm)
        if not (torch.isfinite(aux["loss"]).all() and torch.isfinite(grad_norm)):
            self.actor_optimizer.zero_grad(set_to_none=True)
            return self._skip_nonfinite(metrics, "actor", aux["loss"], grad_norm)
        self.actor_optimizer.step()

        # ---- temperature: one α_k per task, each from its own task's log π
        terms = torch.func.vmap(alpha_loss, in_dims=(0, 0, None))(
            self.log_alpha, log_prob, self.target_entropy)
        metrics.update({f"loss/alpha/{t}": v
                        for t, v in zip(self.tasks, terms["alpha"].detach().tolist())})
        self.alpha_optimizer.zero_grad(set_to_none=True)
        terms["alpha"].sum().backward()      # Σ_k: log α_k only sees task k's term
        alpha_grad = self.log_alpha.grad     # read before zero_grad clears it
        if not torch.isfinite(alpha_grad).all():
            self.alpha_optimizer.zero_grad(set_to_none=True)
            return self._skip_nonfinite(metrics, "alpha", terms["alpha"].detach(), alpha_grad)
        self.alpha_optimizer.step()

        # ---- target critics: Q̄ <- (1 − τ) Q̄ + τ Q
        with torch.no_grad():
            for target, online in zip(self.critic_target.parameters(), self.critic.parameters()):
                target.lerp_(online, self.scfg.tau)

        self.updates += 1
        self.nonfinite.ok()
        metrics["learner/nonfinite_total"] = float(self.nonfinite_total)
        return metrics

    def _skip_nonfinite(self, metrics: dict, part: str, losses, grad) -> dict:
        """Skip the rest of the step (earlier parts were finite and stay applied); a run of
        these means the run has diverged."""
        self.nonfinite.skip(f"{part} losses {losses.tolist()}, gradient {grad.tolist()}")
        return {**metrics, "learner/nonfinite_total": float(self.nonfinite_total)}

    # ---------------------------------------------------------------- weights and state
    def actor_weights(self) -> dict[str, np.ndarray]:
        """Rollout actors run only the policy (`models.sac.build_sac_actor`)."""
        return {k: v.detach().cpu().numpy() for k, v in self.actor.state_dict().items()}

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "optimizers": {"critic": self.critic_optimizer.state_dict(),
                           "actor": self.actor_optimizer.state_dict(),
                           "alpha": self.alpha_optimizer.state_dict()},
            "combiners": {"critic": self.critic_combiner.state_dict(),
                          "actor": self.actor_combiner.state_dict()},
            "counters": {"updates": self.updates, "frames": self.frames,
                         "nonfinite_total": self.nonfinite.total, "nonfinite_run": self.nonfinite.run},
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.critic_optimizer.load_state_dict(state["optimizers"]["critic"])
        self.actor_optimizer.load_state_dict(state["optimizers"]["actor"])
        self.alpha_optimizer.load_state_dict(state["optimizers"]["alpha"])
        self.critic_combiner.load_state_dict(state["combiners"]["critic"])
        self.actor_combiner.load_state_dict(state["combiners"]["actor"])
        counters = state["counters"]
        self.updates, self.frames = int(counters["updates"]), int(counters["frames"])
        self.nonfinite.total = int(counters["nonfinite_total"])
        self.nonfinite.run = int(counters["nonfinite_run"])
        set_rng_state(state["rng"])
