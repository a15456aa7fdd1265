"""The multi-task SAC learner step, top to bottom (Haarnoja et al., 2018, with the per-task
temperature and the per-task gradient combination of papers 003 (PCGrad) and 004 (D-Grad)):

    task-balanced batch [K, n, ...] -> target a′ ~ π(·|s′), min_j Q̄_j(s′, a′)   (no gradient)
    -> critic step: K task losses J_Q,k -> combiner on the critics' shared weights -> Adam
    -> actor step:  K task losses J_π,k (critics held fixed) -> its own combiner -> Adam
    -> α step:      J(α_k) per task on a [K] log α -> Adam
    -> Polyak:      Q̄ <- (1 − τ) Q̄ + τ Q

Task k's losses read only its own rows. When the combiner's weights are fixed (`sum`, the
MT-SAC baseline) the K task losses come from one batched forward of the task-major batch and
the shared gradient from one backward of Σ_k w_k J_k: a sum costs a sum. Otherwise
`apply_task_split` gets the K per-task gradients on the shared weights from one vmapped pass.
Per-task parameters (multi-head output layers, D-Grad (A)'s task networks) get their own task's
gradient untouched. The Gaussian noise of both samples is drawn before the passes, so each
task's loss is a deterministic function of its slice (and the combined gradient can be checked
against a per-task loop).

The step is a device program (learner/step_runner.py): the batch lands in static device
buffers, the update makes no host read (metrics are summed on the device, the non-finite
checks decide there: a part whose loss or gradient is not finite is skipped through fused
Adam's found-inf flag, and every later part with it), so it can run eagerly (the reference),
compiled, or captured as one CUDA graph. `read_metrics()` is the one read, once per chunk.

With `learner.bf16` the networks' forward passes run under bfloat16 autocast: the hidden
layers' matrix products, most of the update's arithmetic, in bfloat16 (on a GPU's tensor cores,
or a CPU's AMX units); the output layers, the losses, the gradients the combiner reads, Adam and
Polyak in float32, and the weights stay float32.

`SacLearner` is a plain class (no Ray) implementing `learner.algorithm.Algorithm`; its state
(`state_dict()` / `load_state_dict()`) makes save -> load -> continue bit-identical on CPU.
"""
from __future__ import annotations

import copy
import math
import sys

import numpy as np
import torch
from torch import nn

from combiners import apply_task_split, make_combiner, task_split_losses
from learner.algorithm import rng_state, set_rng_state
from learner.device_metrics import DeviceMetrics, DeviceNonFiniteGuard
from learner.sac.loss import actor_loss, alpha_loss, critic_loss
from learner.sac.staging import StaticBatch
from learner.step_runner import StepRunner, resolve_mode
from models.sac import build_sac_actor, build_sac_critic

_PARTS = ("critic", "actor", "alpha")     # the step's parts, in order; a skip skips the rest
_GRAPH_SAFE_COMBINERS = ("sum", "pcgrad")   # the same kernels every update


class _TaskSplit:
    """How one network's K task losses reach `.grad`: shared names for the combiner and each
    task's own parameter names.

    With fixed combiner weights, `loss_fn` runs once on the whole task-major batch (task ids
    `[K]`) and one backward writes every gradient. Otherwise task-specific gradients ride in the
    same vmapped pass as the shared ones when that at most doubles G[K, ·] (multi-head output
    layers). D-Grad (A)'s task networks hold K·n² weights per layer, so that pass would build
    K² n² numbers per layer; they take one extra backward of Σ_k J_k instead, which gives each
    task network exactly its own task's gradient.
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

    def apply(self, combiner, loss_fn, batches, task_ids) -> tuple[dict, dict]:
        """Write every `.grad` of the model; return the combiner's stats and the stacked aux.
        `batches` are task-major; `task_ids` is `[K]`. `loss_fn` serves both ways: on the
        whole batch (task ids `[K]`, one batched forward when the weights are fixed) and inside
        the vmapped pass (one task's rows and a 0-dim id)."""
        per_task = (*batches[:1], task_ids, *batches[1:])
        fixed = combiner.fixed_weights(len(self.task_names)) is not None
        separate = not fixed and self.heads is not None and not self.heads_in_pass
        stats, aux = apply_task_split(
            combiner, self.model, loss_fn, per_task, self.shared,
            None if separate else self.heads, names=self.task_names, has_aux=True,
            batched_loss_fn=loss_fn)
        if separate:
            L, _ = task_split_losses(self.model, loss_fn, per_task, has_aux=True)
            params = [p for ps in self.head_params for p in ps]
            for p, g in zip(params, torch.autograd.grad(L.sum(), params)):
                p.grad = g
        return stats, aux


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _finite(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool on the device: every element of every tensor is finite."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


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
        self.compile_mode = resolve_mode(self.lcfg.compile, self.device)
        if self.compile_mode == "graphs" and self.lcfg.combiner.name not in _GRAPH_SAFE_COMBINERS:
            # A graph replays one fixed sequence of kernels; a combiner that measures on some
            # updates and not others (a host-side schedule) would be frozen in one phase.
            print(f"learner.compile: graphs captures the SAC update with the combiners "
                  f"{', '.join(_GRAPH_SAFE_COMBINERS)} only; running "
                  f"{self.lcfg.combiner.name!r} eagerly", file=sys.stderr, flush=True)
            self.compile_mode = "off"
        # Fused Adam: one kernel per step, a found-inf flag that skips it on the device, and
        # (capturable) its step counts on the device, as a CUDA graph needs.
        adam = dict(fused=True, capturable=self.compile_mode == "graphs")
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=s.critic_lr, **adam)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=s.actor_lr, **adam)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=s.alpha_lr, **adam)
        self._skip = {part: torch.zeros((), device=self.device) for part in _PARTS}
        for part, optimizer in zip(_PARTS, self._optimizers()):
            optimizer.found_inf = self._skip[part]
        ccfg = self.lcfg.combiner
        # PCGrad treats the critic and the actor separately (paper 003, §4; paper 004, §4.3).
        self.critic_combiner = make_combiner(ccfg.name, **ccfg.options)
        self.actor_combiner = make_combiner(ccfg.name, **ccfg.options)
        self._critic_split = _TaskSplit(self.critic, self.tasks)
        self._actor_split = _TaskSplit(self.actor, self.tasks)
        self._task_ids = torch.arange(K, device=self.device)
        self._target_params = list(self.critic_target.parameters())
        self._online_params = list(self.critic.parameters())
        self.batch = StaticBatch(K, obs_dim, A, self.device)
        self.metrics = DeviceMetrics(self.device)
        self.nonfinite = DeviceNonFiniteGuard(self.lcfg.max_nonfinite_run, self.device, _PARTS)
        self._runner = StepRunner(self._update, self.compile_mode, self.device,
                                  save=self._snapshot, load=self._restore, name="SAC update")
        self.steps = 0           # update steps taken (skipped ones too)
        self.frames = 0

    def _optimizers(self):
        return (self.critic_optimizer, self.actor_optimizer, self.alpha_optimizer)

    @property
    def updates(self) -> int:
        """Steps that changed the weights, as of the last read (a skip is known once read)."""
        return self.steps - self.nonfinite.total

    @property
    def nonfinite_total(self) -> int:
        return self.nonfinite.total

    # ---------------------------------------------------------------- per-task losses
    def _autocast(self) -> torch.autocast:
        """The networks' forward passes, in bfloat16 with `learner.bf16` (their output layers
        stay float32, models/sac.py). Only the forwards: the losses, the gradients the combiner
        reads (PCGrad's dot products among them), Adam and Polyak stay float32. No weight-cast
        cache: PyTorch asks for it off under CUDA graph capture (`make_graphed_callables`), and
        each weight is cast once per forward anyway."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.lcfg.bf16,
                              cache_enabled=False)

    def _critic_task_loss(self, critic, obs, k, action, reward, terminated, next_q1, next_q2,
                          next_log_prob, alpha):
        with self._autocast():
            q1, q2 = critic(obs, action, k)
        terms = critic_loss(q1, q2, reward, terminated, next_q1, next_q2, next_log_prob, alpha,
                            discount=self.lcfg.discount, reward_scale=self.scfg.reward_scale)
        return terms["critic"], {"loss": terms["critic"].detach(),
                                 "q_mean": 0.5 * (terms["stats/q1"] + terms["stats/q2"])}

    def _actor_task_loss(self, actor, obs, k, noise, alpha):
        with self._autocast():
            action, log_prob = actor.sample(obs, k, noise)
            # The critics are constants here: the combiner asks autograd for the actor's
            # gradients only, so none is computed for (or written to) the critics' weights.
            q1, q2 = self.critic(obs, action, k)
        terms = actor_loss(log_prob, q1, q2, alpha)
        return terms["actor"], {"loss": terms["actor"].detach(), "log_prob": log_prob.detach()}

    # ---------------------------------------------------------------- the step
    def step(self, batch: dict) -> None:
        """One SAC step on a task-major batch; no host read (see `read_metrics`)."""
        if self.batch.load(batch):      # new shapes: a captured graph no longer fits
            self._runner.reset()
        self.frames = int(batch["inserted"])
        # The Gaussian noise of both samples is drawn here, eagerly, into static buffers: the
        # same draws from the same generator whichever way the update itself runs (compiled
        # code would draw from its own random stream).
        self._noise = self.batch.noise(2, self.action_dim)
        for eps in self._noise:
            eps.normal_()
        self._runner()
        self.steps += 1

    def read_metrics(self) -> dict[str, float]:
        """The means of the metrics since the last read; raises after a run of skipped steps."""
        metrics = self.metrics.read()
        self.nonfinite.read()
        return metrics

    def update(self, batch: dict) -> dict[str, float]:
        """`step` then `read_metrics`: one step's metrics at once."""
        self.step(batch)
        metrics = self.read_metrics()
        metrics["learner/nonfinite_total"] = float(self.nonfinite_total)
        return metrics

    def _update(self) -> None:
        """The update over `self.batch`'s device buffers, in the order of the module docstring."""
        b = self.batch.tensors
        k = self._task_ids
        noise_next, noise_pi = self._noise                       # for a′ ~ π(·|s′), ã ~ π(·|s)
        alpha = self.log_alpha.detach().exp()
        alpha_rows = alpha[:, None]                              # α_k against [K, n] rows

        # ---- critic: J_Q per task, combined on the shared critic weights
        with torch.no_grad(), self._autocast():
            next_action, next_log_prob = self.actor.sample(b["next_obs"], k, noise_next)
            next_q1, next_q2 = self.critic_target(b["next_obs"], next_action, k)
        stats, aux = self._critic_split.apply(
            self.critic_combiner, self._critic_task_loss,
            (b["obs"], b["action"], b["reward"], b["terminated"], next_q1, next_q2,
             next_log_prob, alpha_rows), k)
        critic_norm = _grad_norm(self._online_params)
        ok_critic = _finite(aux["loss"], critic_norm)
        self._skip["critic"].copy_((~ok_critic).float())
        self.critic_optimizer.step()
        self.metrics.record({
            **{f"sac/alpha/{t}": a for t, a in zip(self.tasks, alpha.unbind())},
            **{f"loss/critic/{t}": v for t, v in zip(self.tasks, aux["loss"].unbind())},
            **{f"combiner/critic/{s}": v for s, v in stats.items()},
            "sac/q_mean": aux["q_mean"].mean(), "learner/grad_norm/critic": critic_norm,
        }, ok_critic)
        critic_detail = torch.cat([aux["loss"], critic_norm.reshape(1)])

        # ---- actor: J_π per task with the updated critics held fixed
        stats, aux = self._actor_split.apply(
            self.actor_combiner, self._actor_task_loss, (b["obs"], noise_pi, alpha_rows), k)
        log_prob = aux["log_prob"]                                   # [K, n], detached
        actor_norm = _grad_norm(self.actor.parameters())
        ok_actor = ok_critic & _finite(aux["loss"], actor_norm)
        self._skip["actor"].copy_((~ok_actor).float())
        self.actor_optimizer.step()
        self.metrics.record({
            **{f"loss/actor/{t}": v for t, v in zip(self.tasks, aux["loss"].unbind())},
            **{f"sac/entropy/{t}": v for t, v in zip(self.tasks, (-log_prob.mean(dim=1)).unbind())},
            **{f"combiner/actor/{s}": v for s, v in stats.items()},
            "learner/grad_norm/actor": actor_norm,
        }, ok_actor)
        actor_detail = torch.cat([aux["loss"], actor_norm.reshape(1)])

        # ---- temperature: one α_k per task, each from its own task's log π
        terms = alpha_loss(self.log_alpha, log_prob, self.target_entropy)
        self.log_alpha.grad = torch.autograd.grad(terms["alpha"].sum(), self.log_alpha)[0]
        alpha_grad = self.log_alpha.grad     # Σ_k: log α_k only sees task k's term
        ok_alpha = ok_actor & _finite(alpha_grad)
        self._skip["alpha"].copy_((~ok_alpha).float())
        self.alpha_optimizer.step()
        self.metrics.record({f"loss/alpha/{t}": v
                             for t, v in zip(self.tasks, terms["alpha"].detach().unbind())}, ok_alpha)
        alpha_detail = torch.cat([terms["alpha"].detach(),
                                  torch.linalg.vector_norm(alpha_grad).reshape(1)])

        # ---- target critics: Q̄ <- (1 − τ) Q̄ + τ Q, only after a step with every part taken
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._online_params,
                                 ok_alpha.to(alpha.dtype) * self.scfg.tau)
        failed = torch.where(~ok_critic, 0, torch.where(~ok_actor, 1, 2))
        detail = torch.where(~ok_critic, critic_detail,
                             torch.where(~ok_actor, actor_detail, alpha_detail))
        self.nonfinite.observe(ok_alpha, failed, detail)

    # ---------------------------------------------------------------- weights and state
    def actor_weights(self) -> dict[str, np.ndarray]:
        """Rollout actors run only the policy (`models.sac.build_sac_actor`)."""
        return {k: v.cpu().numpy() for k, v in self.actor_tensors().items()}

    def actor_tensors(self) -> dict[str, torch.Tensor]:
        """The same weights as the learner's own tensors (on its device, not copied)."""
        return {k: v.detach() for k, v in self.actor.state_dict().items()}

    def state_dict(self) -> dict:
        self.nonfinite.sync()
        return {
            **self._weights_and_optimizers(),
            "counters": {"updates": self.updates, "frames": self.frames,
                         "nonfinite_total": self.nonfinite.total, "nonfinite_run": self.nonfinite.run},
            "rng": rng_state(),
        }

    def _snapshot(self) -> dict:
        """What one update changes (weights, optimizers, combiners, the device-side metric
        sums and non-finite counts): the step runner checks its fast path against it."""
        return {"learner": self._weights_and_optimizers(), "metrics": self.metrics.snapshot(),
                "nonfinite": self.nonfinite.snapshot()}

    def _restore(self, saved: dict) -> None:
        self._load_weights_and_optimizers(saved["learner"])
        self.metrics.restore(saved["metrics"])
        self.nonfinite.restore(saved["nonfinite"])

    def _weights_and_optimizers(self) -> dict:
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
        }

    def _load_weights_and_optimizers(self, state: dict) -> None:
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

    def load_state_dict(self, state: dict) -> None:
        self._load_weights_and_optimizers(state)
        counters = state["counters"]
        self.nonfinite.load(counters["nonfinite_total"], counters["nonfinite_run"])
        self.steps = int(counters["updates"]) + self.nonfinite.total
        self.frames = int(counters["frames"])
        set_rng_state(state["rng"])
        # The optimizers' state tensors are new objects now: a captured graph reads the old ones.
        self._runner.reset()
