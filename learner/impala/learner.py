"""The IMPALA learner step, top to bottom: batch -> forward -> named V-trace loss terms ->
gradient -> clip -> RMSProp step (Espeholt et al., 2018, with paper 000's settings).

`ImpalaLearner` is a plain class (no Ray) implementing `learner.algorithm.Algorithm`, so the
math and resume are testable on their own; `learner/remote.py` drives it inside a Ray actor.
Its whole state is one explicit value
(`state_dict()` / `load_state_dict()`): weights, optimizer, counters and RNG states, so that
save -> load -> continue is bit-identical to continuing.

The step is a device program (DESIGN.md, "The learner as a device program"): the batch goes to
the device once, and nothing in `step` reads a device value back. Its metrics are added into
device buffers (`DeviceMetrics`) and the non-finite guard decides there: the optimizer always
steps, and where the loss or the gradient norm is not finite the weights and the optimizer
state are put back as they were (`torch.where`), the skip counted on the device.
`read_metrics()`, once per learner chunk, is the one read; it syncs `updates` and the
non-finite counters and raises after a run of skipped steps.
"""
from __future__ import annotations

import numpy as np
import torch

from combiners import apply_combined, apply_forward_dots, make_combiner
from learner.algorithm import rng_state, set_rng_state
from learner.aux import AuxBatch, build_aux_terms
from learner.device_metrics import DeviceMetrics, DeviceNonFiniteGuard
from learner.impala.loss import impala_loss, total_loss
from learner.impala.source import collate  # noqa: F401  (re-exported: the batch format lives there)
from learner.impala.terms import (AuxLosses, aux_term_values, combiner_options, layout_kind,
                                  parameter_roles)
from models.actor_critic import model_from_config

#: What the guard names as the cause of a skipped step (index decided on the device).
NONFINITE_PARTS = ("loss nan", "loss inf", "gradient norm nan", "gradient norm inf")


class ImpalaLearner:
    def __init__(self, cfg, spec, device: str = "cpu"):
        self.cfg, self.lcfg = cfg, cfg.learner
        self.device = torch.device(device)
        self.num_tasks = len(cfg.env.tasks)
        self.model = model_from_config(cfg, spec.obs_shape, spec.num_actions).to(self.device)
        # Auxiliary heads read the torso's features; they train with the same optimizer.
        self.aux = build_aux_terms(cfg, spec, self.model.torso.output_dim, self.device)
        cuda = self.device.type == "cuda"
        # Capturable on CUDA: the step count lives on the device, so a skipped step can be
        # undone there too.
        self.optimizer = torch.optim.RMSprop(
            self.parameters(), lr=self.lcfg.lr, alpha=self.lcfg.rmsprop_alpha,
            eps=self.lcfg.rmsprop_eps, momentum=self.lcfg.rmsprop_momentum,
            foreach=True if cuda else None, capturable=cuda)
        # Steps taken, less the skipped ones known at the last read: it moves with every step,
        # so weights are published and versioned every k steps inside a chunk; a skip found at
        # the read takes its step back.
        self.updates = 0
        self.frames = 0          # environment frames consumed (agent steps x frameskip)
        self.nonfinite = DeviceNonFiniteGuard(self.lcfg.max_nonfinite_run, self.device,
                                              NONFINITE_PARTS)
        self.metrics = DeviceMetrics(self.device)
        self._pin = cuda
        self._task_range = torch.arange(self.num_tasks, device=self.device)
        # Several tasks, aux terms or a non-sum combiner: named loss terms whose gradients are
        # combined on the shared weights (learner/impala/terms.py says which terms and weights).
        ccfg = self.lcfg.combiner
        self.layout = layout_kind(self.lcfg, self.num_tasks)
        self.combiner = None
        if self.layout != "plain":
            self.combiner = make_combiner(ccfg.name, **combiner_options(ccfg, self.num_tasks))
            self.combiner.to(self.device)
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
        """One learner step on a collated batch, read at once: its metrics (the loss terms are
        absent when the step was skipped)."""
        self.step(batch)
        return self.read_metrics()

    def step(self, batch: dict) -> None:
        """One learner step without a host read: metrics and the skip decision stay on the
        device until `read_metrics`."""
        T, B = batch["actions"].shape
        obs = self._observations(batch)                           # [T+1, B, ...]
        actions = self._to_device(batch["actions"])
        rewards = self._to_device(batch["rewards"])
        episode_end = self._to_device(batch["terminated"] | batch["truncated"])
        behaviour_logits = self._to_device(batch["behaviour_logits"])
        task_id = self._to_device(batch["task_id"])
        # Between CosineGate's measurements the aux weights are known before the forward pass:
        # the aux heads then read gated features, and one backward does the whole update.
        gate = self._held_gate()

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.lcfg.bf16):
            flat_obs = obs.reshape((T + 1) * B, *obs.shape[2:])
            z, logits, values = self.model.features_and_outputs(flat_obs, task_id.repeat(T + 1))
            logits = logits.float().view(T + 1, B, -1)
            values = values.float().view(T + 1, B)
            make_aux_batch = self._aux_batch_maker(batch, obs, actions, rewards, task_id, episode_end)
            aux_steps = self._aux_steps(make_aux_batch, z, logits, gate)

        # After a same-step autoreset the final observation of an ended episode is gone, so a
        # truncation is cut like a termination: no bootstrap across it.
        discounts = self.lcfg.discount * (~episode_end).float()

        def loss_terms(mask=None):
            terms = impala_loss(
                logits[:-1], values[:-1], values[-1], actions, behaviour_logits, rewards,
                discounts, baseline_coef=self.lcfg.baseline_coef,
                entropy_coef=self.lcfg.entropy_coef, clip_rho=self.lcfg.clip_rho,
                clip_pg_rho=self.lcfg.clip_pg_rho, clip_c=self.lcfg.clip_c,
                reduction=self.lcfg.loss_reduction, mask=mask)
            if self.lcfg.rl_coef != 1.0:
                terms.update({k: self.lcfg.rl_coef * v for k, v in terms.items() if k.startswith("main/")})
            return terms

        task_metrics = []
        if self.layout == "plain":
            terms = loss_terms()
            task_losses = None
            loss = total_loss(terms)
        elif self.layout == "main_aux":
            terms = loss_terms()
            task_losses = {"main": total_loss(terms),
                           **aux_term_values(aux_steps, None, self.lcfg.loss_reduction, self.aux)}
            terms.update({k: v for k, v in task_losses.items() if k != "main"})
            loss = torch.stack(list(task_losses.values())).sum()
        else:
            task_losses, task_metrics = self._task_losses(loss_terms, task_id, aux_steps, T)
            terms = {}
            loss = torch.stack(list(task_losses.values())).sum()

        self.frames += T * B * self.cfg.frames_per_step
        metrics = {f"loss/{k}": v for k, v in terms.items()}

        self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        if self.combiner is None:
            loss.backward()
        elif gate is not None:
            # Torso: ∇L_main + Σ_i gate_i ∇L_aux,i (the heads' features carry the gate);
            # each aux head: its own gradient. That is `combine` of the held gate, in one pass.
            loss.backward()
            L = torch.stack(list(task_losses.values())).detach()
            stats = self.combiner.record_fixed(L, list(task_losses))
            metrics.update({f"combiner/{k}": v for k, v in stats.items()})
        elif self._forward_dots:
            stats = apply_forward_dots(
                self.combiner, self._aux_losses, task_losses["main"],
                lambda params: torch.func.functional_call(
                    self._aux_losses, params, (flat_obs, task_id.repeat(T + 1), make_aux_batch)),
                self._aux_losses.names_of(p for _, p in self._shared),
                {term: self._aux_losses.names_of(ps) for term, ps in self._task_params.items()},
                aux_losses=torch.stack([v for k, v in task_losses.items() if k != "main"]))
            metrics.update({f"combiner/{k}": v for k, v in stats.items()})
        else:
            stats = apply_combined(self.combiner, task_losses, self._shared, self._task_params,
                                   strategy=self.lcfg.combiner.strategy)
            metrics.update({f"combiner/{k}": v for k, v in stats.items()})
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.lcfg.max_grad_norm)
        # A finite loss can still overflow in backward: stepping would poison every weight.
        ok = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
        self._step_where(ok)
        self.updates += 1
        self.nonfinite.observe(ok, self._failed_part(loss.detach(), grad_norm))
        metrics.update({"loss/total": loss.detach(), "learner/grad_norm": grad_norm,
                        "learner/lr": torch.full((), self.optimizer.param_groups[0]["lr"],
                                                 device=self.device)})
        self.metrics.record(metrics, ok)
        for present, values in task_metrics:   # a task absent from the batch reports nothing
            self.metrics.record(values, ok & present)

    def read_metrics(self) -> dict[str, float]:
        """The means of what the steps since the last read reported (the chunk's one read);
        syncs `updates` and the non-finite counters, and raises `NonFiniteLossError` after a
        run of `max_nonfinite_run` skipped steps."""
        skipped_before = self.nonfinite.total
        try:
            self.nonfinite.read()
        finally:
            self.updates -= self.nonfinite.total - skipped_before
        out = self.metrics.read()
        out["learner/nonfinite_total"] = float(self.nonfinite_total)
        return out

    @property
    def nonfinite_total(self) -> int:
        return self.nonfinite.total

    @staticmethod
    def _failed_part(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """Index into NONFINITE_PARTS of what was not finite (meaningful only on a skip)."""
        loss_part = torch.where(torch.isnan(loss), 0, 1)
        grad_part = torch.where(torch.isnan(grad_norm), 2, 3)
        return torch.where(torch.isfinite(loss), grad_part, loss_part)

    def _step_where(self, ok: torch.Tensor) -> None:
        """`optimizer.step()`, kept only where `ok`: otherwise every weight and optimizer
        buffer goes back to what it was (a buffer the step created, to its initial zeros), so
        a skipped step changes nothing, without the host knowing it was skipped."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        before = [(p, {k: v.clone() for k, v in self.optimizer.state[p].items()
                       if isinstance(v, torch.Tensor)}) for p in params]
        weights = [p.detach().clone() for p in params]
        self.optimizer.step()
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(torch.where(ok, p, w))
            for p, old in before:
                for key, new in self.optimizer.state[p].items():
                    if isinstance(new, torch.Tensor):
                        prev = old.get(key)
                        if prev is None:
                            prev = torch.zeros_like(new)
                        new.copy_(torch.where(ok.to(new.device), new, prev))

    def _held_gate(self) -> torch.Tensor | None:
        """CosineGate's aux weights `[n_aux]` (device) on an update between its measurements."""
        if self.layout != "main_aux" or self._forward_dots or not len(self.aux):
            return None
        w = self.combiner.fixed_weights(1 + len(self.aux))
        if not isinstance(w, torch.Tensor):
            return None
        return w[1:].to(self.device)

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

    def _aux_steps(self, make_aux_batch, z, logits, gate=None) -> dict:
        """Per-step loss and mask of every aux term, `{name: ([T, B], [T, B])}`.

        With a `gate`, aux term i reads `x.detach() + gate_i (x − x.detach())` for the features
        and the logits: the same values, but a backward reaching the shared weights through
        them is scaled by gate_i, while the term's own head gets its unscaled gradient.
        """
        if not len(self.aux):
            return {}
        if gate is None:
            aux_batch = make_aux_batch(z.float(), logits)
            return {name: term.per_step(aux_batch) for name, term in self.aux.items()}
        z, logits = z.float(), logits
        z_d, logits_d = z.detach(), logits.detach()
        steps = {}
        for i, (name, term) in enumerate(self.aux.items()):
            steps[name] = term.per_step(make_aux_batch(z_d + gate[i] * (z - z_d),
                                                       logits_d + gate[i] * (logits - logits_d)))
        return steps

    def _task_losses(self, loss_terms, task_id: torch.Tensor, aux_steps: dict, T: int):
        """Loss of each task on its own columns (a column mask on the device), its aux terms
        included, and `(present, metrics)` per task; a task absent from the batch gets a zero
        loss (a zero gradient row), so the combiner always sees every task in the same order."""
        losses, task_metrics = {}, []
        columns = task_id[None, :] == self._task_range[:, None]            # [K, B]
        for k, name in enumerate(self.cfg.env.tasks):
            mask = columns[k]
            terms = loss_terms(mask.float().expand(T, -1))
            terms.update(aux_term_values(aux_steps, mask, self.lcfg.loss_reduction, self.aux))
            losses[f"task/{name}"] = total_loss(terms)
            # One task keeps the plain names, so runs with and without a combiner compare.
            prefix = f"{name}/" if self.num_tasks > 1 else ""
            task_metrics.append((mask.any(), {f"loss/{prefix}{key}": value
                                              for key, value in terms.items()}))
        return losses, task_metrics

    def _set_lr(self) -> None:
        lr = self.lcfg.lr
        if self.lcfg.lr_decay:
            lr *= max(0.0, 1.0 - self.frames / self.cfg.run.total_frames)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ---------------------------------------------------------------- weights and state
    def actor_weights(self) -> dict[str, np.ndarray]:
        """Rollout actors run the whole actor-critic."""
        return {k: v.cpu().numpy() for k, v in self.actor_tensors().items()}

    def actor_tensors(self) -> dict[str, torch.Tensor]:
        """The same weights as the learner's own tensors (on its device, not copied)."""
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict:
        """The whole state; its counters are those of the last `read_metrics` (the learner
        actor saves at the end of a chunk, after its read)."""
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
            self.combiner.to(self.device)
        counters = state["counters"]
        self.updates, self.frames = int(counters["updates"]), int(counters["frames"])
        self.nonfinite.load(counters["nonfinite_total"], counters["nonfinite_run"])
        set_rng_state(state["rng"])
