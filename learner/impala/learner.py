"""The IMPALA learner step, top to bottom: batch -> forward -> named V-trace loss terms ->
gradient -> clip -> RMSProp step (Espeholt et al., 2018, with paper 000's settings).

`ImpalaLearner` is a plain class (no Ray) implementing `learner.algorithm.Algorithm`, so the
math and resume are testable on their own; `learner/remote.py` drives it inside a Ray actor.
Its whole state is one explicit value
(`state_dict()` / `load_state_dict()`): weights, optimizer, counters and RNG states, so that
save -> load -> continue is bit-identical to continuing.
"""
from __future__ import annotations

import numpy as np
import torch

from combiners import apply_combined, apply_forward_dots, make_combiner
from learner.algorithm import NonFiniteGuard, rng_state, set_rng_state
from learner.aux import AuxBatch, build_aux_terms
from learner.impala.loss import impala_loss, total_loss
from learner.impala.source import collate  # noqa: F401  (re-exported: the batch format lives there)
from learner.impala.terms import (AuxLosses, aux_term_values, combiner_options, layout_kind,
                                  parameter_roles)
from models.actor_critic import model_from_config


class ImpalaLearner:
    def __init__(self, cfg, spec, device: str = "cpu"):
        self.cfg, self.lcfg = cfg, cfg.learner
        self.device = torch.device(device)
        self.num_tasks = len(cfg.env.tasks)
        self.model = model_from_config(cfg, spec.obs_shape, spec.num_actions).to(self.device)
        # Auxiliary heads read the torso's features; they train with the same optimizer.
        self.aux = build_aux_terms(cfg, spec, self.model.torso.output_dim, self.device)
        self.optimizer = torch.optim.RMSprop(
            self.parameters(), lr=self.lcfg.lr, alpha=self.lcfg.rmsprop_alpha,
            eps=self.lcfg.rmsprop_eps, momentum=self.lcfg.rmsprop_momentum)
        self.updates = 0
        self.frames = 0          # environment frames consumed (agent steps x frameskip)
        self.nonfinite = NonFiniteGuard(self.lcfg.max_nonfinite_run)
        self._metric_sums: dict[str, float] = {}
        self._metric_counts: dict[str, int] = {}
        self._pin = self.device.type == "cuda"
        # Several tasks, aux terms or a non-sum combiner: named loss terms whose gradients are
        # combined on the shared weights (learner/impala/terms.py says which terms and weights).
        ccfg = self.lcfg.combiner
        self.layout = layout_kind(self.lcfg, self.num_tasks)
        self.combiner = None
        if self.layout != "plain":
            self.combiner = make_combiner(ccfg.name, **combiner_options(ccfg, self.num_tasks))
            self._shared, self._task_params = parameter_roles(self.layout, self.model, self.aux,
                                                              cfg.env.tasks)
        # OL-AUX from forward-mode dot products: the aux losses as a function of the weights.
        self._forward_dots = self.layout == "main_aux" and ccfg.strategy == "forward"
        if self._forward_dots:
            self._aux_losses = AuxLosses(self.model, self.aux, self.lcfg.loss_reduction)

    def parameters(self) -> list[torch.nn.Parameter]:
        """Everything the optimizer trains: the actor-critic and the aux heads."""
        return list(self.model.parameters()) + list(self.aux.parameters())

    # ---------------------------------------------------------------- data
    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self._pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _observations(self, batch: dict) -> torch.Tensor:
        if "obs_pool" in batch:  # each frame sent once: restack here, on the learner's device
            return self._to_device(batch["obs_pool"])[self._to_device(batch["obs_index"])]
        return self._to_device(batch["obs"])

    # ---------------------------------------------------------------- the step
    def update(self, batch: dict) -> dict[str, float]:
        """One learner step on a collated batch; returns metrics (empty loss terms if skipped)."""
        T, B = batch["actions"].shape
        obs = self._observations(batch)                           # [T+1, B, ...]
        actions = self._to_device(batch["actions"])
        rewards = self._to_device(batch["rewards"])
        episode_end = self._to_device(batch["terminated"] | batch["truncated"])
        behaviour_logits = self._to_device(batch["behaviour_logits"])
        task_id = self._to_device(batch["task_id"])

        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.lcfg.bf16 and self.device.type == "cuda"):
            flat_obs = obs.reshape((T + 1) * B, *obs.shape[2:])
            z, logits, values = self.model.features_and_outputs(flat_obs, task_id.repeat(T + 1))
            logits = logits.float().view(T + 1, B, -1)
            values = values.float().view(T + 1, B)
            make_aux_batch = self._aux_batch_maker(batch, obs, actions, rewards, task_id, episode_end)
            # With forward-mode dots the aux losses that train are computed inside the jvp;
            # here only their values (for metrics and the finite check), from the heads alone.
            with torch.set_grad_enabled(not self._forward_dots):
                aux_steps = self._aux_steps(make_aux_batch, z, logits)

        # After a same-step autoreset the final observation of an ended episode is gone, so a
        # truncation is cut like a termination: no bootstrap across it.
        discounts = self.lcfg.discount * (~episode_end).float()

        def loss_terms(cols=slice(None)):
            terms = impala_loss(
                logits[:-1, cols], values[:-1, cols], values[-1, cols], actions[:, cols],
                behaviour_logits[:, cols], rewards[:, cols], discounts[:, cols],
                baseline_coef=self.lcfg.baseline_coef, entropy_coef=self.lcfg.entropy_coef,
                clip_rho=self.lcfg.clip_rho, clip_pg_rho=self.lcfg.clip_pg_rho,
                clip_c=self.lcfg.clip_c, reduction=self.lcfg.loss_reduction)
            if self.lcfg.rl_coef != 1.0:
                terms.update({k: self.lcfg.rl_coef * v for k, v in terms.items() if k.startswith("main/")})
            return terms

        if self.layout == "plain":
            terms = loss_terms()
            task_losses = None
            loss = total_loss(terms)
        elif self.layout == "main_aux":
            terms = loss_terms()
            task_losses = {"main": total_loss(terms),
                           **aux_term_values(aux_steps, slice(None), self.lcfg.loss_reduction, self.aux)}
            terms.update({k: v for k, v in task_losses.items() if k != "main"})
            loss = torch.stack(list(task_losses.values())).sum()
        else:
            task_losses, terms = self._task_losses(loss_terms, batch["task_id"], logits, aux_steps)
            loss = torch.stack(list(task_losses.values())).sum()

        self.frames += T * B * self.cfg.frames_per_step
        metrics = {f"loss/{k}": float(v.detach()) for k, v in terms.items()}
        if not torch.isfinite(loss):
            return self._skip_nonfinite(metrics, f"loss {float(loss.detach())}")

        self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        if self.combiner is None:
            loss.backward()
        elif self._forward_dots:
            stats = apply_forward_dots(
                self.combiner, self._aux_losses, task_losses["main"],
                lambda params: torch.func.functional_call(
                    self._aux_losses, params, (flat_obs, task_id.repeat(T + 1), make_aux_batch)),
                self._aux_losses.names_of(p for _, p in self._shared),
                {term: self._aux_losses.names_of(ps) for term, ps in self._task_params.items()})
            metrics.update({f"combiner/{k}": v for k, v in stats.items()})
        else:
            stats = apply_combined(self.combiner, task_losses, self._shared, self._task_params,
                                   strategy=self.lcfg.combiner.strategy)
            metrics.update({f"combiner/{k}": v for k, v in stats.items()})
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.lcfg.max_grad_norm)
        if not torch.isfinite(grad_norm):
            # A finite loss can still overflow in backward; stepping would poison every weight.
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip_nonfinite(metrics, f"gradient norm {float(grad_norm)}")
        self.optimizer.step()
        self.updates += 1
        self.nonfinite.ok()
        metrics.update({
            "loss/total": float(loss.detach()), "learner/grad_norm": float(grad_norm),
            "learner/lr": self.optimizer.param_groups[0]["lr"],
            "learner/nonfinite_total": float(self.nonfinite_total),
        })
        return metrics

    def step(self, batch: dict) -> None:
        """`update` with its metrics kept for `read_metrics` (host-side for now)."""
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

    def _skip_nonfinite(self, metrics: dict, what: str) -> dict:
        """Skip the step, keep the weights; a run of these means the run has diverged."""
        self.nonfinite.skip(what)
        return {**metrics, "learner/nonfinite_total": float(self.nonfinite_total)}

    def _aux_batch_maker(self, batch, obs, actions, rewards, task_id, episode_end):
        """`make(z, logits)` -> the `AuxBatch` of this batch for flat torso outputs."""
        T, B = actions.shape
        teacher = {key.split("/", 1)[1]: self._to_device(value) for key, value in batch.items()
                   if key.startswith("teacher_probs/")}

        def make(z: torch.Tensor, logits: torch.Tensor) -> AuxBatch:
            return AuxBatch(obs=obs, z=z.view(T + 1, B, -1), logits=logits.view(T + 1, B, -1)[:-1],
                            actions=actions, rewards=rewards, episode_end=episode_end,
                            task_id=task_id, teacher_probs=teacher)
        return make

    def _aux_steps(self, make_aux_batch, z, logits) -> dict:
        """Per-step loss and mask of every aux term, `{name: ([T, B], [T, B])}`."""
        if not len(self.aux):
            return {}
        aux_batch = make_aux_batch(z.float(), logits)
        return {name: term.per_step(aux_batch) for name, term in self.aux.items()}

    def _task_losses(self, loss_terms, task_id: np.ndarray, logits: torch.Tensor, aux_steps: dict):
        """Loss of each task on its own columns, its aux terms included; a task absent from the
        batch gets a zero loss (a zero gradient row), so the combiner always sees every task in
        the same order."""
        losses, metrics = {}, {}
        for k, name in enumerate(self.cfg.env.tasks):
            cols = np.flatnonzero(task_id == k)
            if len(cols) == 0:
                losses[f"task/{name}"] = logits.sum() * 0.0
                continue
            cols = torch.as_tensor(cols, device=self.device)
            terms = loss_terms(cols)
            terms.update(aux_term_values(aux_steps, cols, self.lcfg.loss_reduction, self.aux))
            losses[f"task/{name}"] = total_loss(terms)
            # One task keeps the plain names, so runs with and without a combiner compare.
            prefix = f"{name}/" if self.num_tasks > 1 else ""
            metrics.update({f"{prefix}{key}": value for key, value in terms.items()})
        return losses, metrics

    def _set_lr(self) -> None:
        lr = self.lcfg.lr
        if self.lcfg.lr_decay:
            lr *= max(0.0, 1.0 - self.frames / self.cfg.run.total_frames)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ---------------------------------------------------------------- weights and state
    def actor_weights(self) -> dict[str, np.ndarray]:
        """Rollout actors run the whole actor-critic."""
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "aux": self.aux.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "combiner": self.combiner.state_dict() if self.combiner is not None else {},
            "counters": {"updates": self.updates, "frames": self.frames,
                         "nonfinite_total": self.nonfinite.total, "nonfinite_run": self.nonfinite.run},
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.aux.load_state_dict(state.get("aux", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.combiner is not None:
            self.combiner.load_state_dict(state["combiner"])
        counters = state["counters"]
        self.updates, self.frames = int(counters["updates"]), int(counters["frames"])
        self.nonfinite.total = int(counters["nonfinite_total"])
        self.nonfinite.run = int(counters["nonfinite_run"])
        set_rng_state(state["rng"])
