"""An independent IMPALA loss for checking the learner's wiring: a plain loop over the batch.

Every step is its own forward pass of one observation, the V-trace target is the explicit sum
of eq. 1 of Espeholt et al. (2018) (not Remark 1's recursion the library uses), and the
discount is rebuilt from `terminated` and `truncated` here, so a learner that drops either flag,
never cuts the discount or zeroes the bootstrap value disagrees with it.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def reference_vtrace(values: list[float], bootstrap: float, rewards: list[float],
                     discounts: list[float], ratios: list[float], rho_bar: float, c_bar: float,
                     pg_rho_bar: float) -> tuple[list[float], list[float]]:
    """v_s = V(x_s) + sum_{t>=s} (prod_{i=s}^{t-1} gamma_i c_i) delta_t (eq. 1, gamma per step)
    and pg_advantage_s = min(pg_rho_bar, ratio_s) (r_s + gamma_s v_{s+1} - V(x_s))."""
    T = len(values)
    v_next = values[1:] + [bootstrap]
    vs = []
    for s in range(T):
        total, trace = 0.0, 1.0
        for t in range(s, T):
            delta = min(rho_bar, ratios[t]) * (rewards[t] + discounts[t] * v_next[t] - values[t])
            total += trace * delta
            trace *= discounts[t] * min(c_bar, ratios[t])
        vs.append(values[s] + total)
    vs_next = vs[1:] + [bootstrap]
    advantages = [min(pg_rho_bar, ratios[s]) * (rewards[s] + discounts[s] * vs_next[s] - values[s])
                  for s in range(T)]
    return vs, advantages


def reference_loss(model: torch.nn.Module, batch: dict, lcfg, columns) -> dict[str, torch.Tensor]:
    """IMPALA's three loss terms over `columns` of a collated batch, one step at a time.

    Differentiable with respect to `model`; targets carry no gradient.
    """
    T = batch["actions"].shape[0]
    pg, baseline, entropy = [], [], []
    for b in columns:
        task = torch.tensor([int(batch["task_id"][b])])
        log_pis, values = [], []
        for t in range(T + 1):
            logits, value = model(torch.as_tensor(batch["obs"][t, b][None]), task)
            log_pis.append(torch.log_softmax(logits[0], -1))
            values.append(value[0])
        v = [float(x.detach()) for x in values]
        ratios, discounts = [], []
        for t in range(T):
            a = int(batch["actions"][t, b])
            mu = torch.log_softmax(torch.as_tensor(batch["behaviour_logits"][t, b]).double(), -1)[a]
            ratios.append(math.exp(float(log_pis[t][a].detach()) - float(mu)))
            ended = bool(batch["terminated"][t, b]) or bool(batch["truncated"][t, b])
            discounts.append(0.0 if ended else lcfg.discount)
        rewards = [float(r) for r in batch["rewards"][:, b]]
        vs, advantages = reference_vtrace(v[:T], v[T], rewards, discounts, ratios,
                                          lcfg.clip_rho, lcfg.clip_c, lcfg.clip_pg_rho)
        for t in range(T):
            a = int(batch["actions"][t, b])
            pg.append(-log_pis[t][a] * advantages[t])
            baseline.append((vs[t] - values[t]) ** 2)
            entropy.append(-(log_pis[t].exp() * log_pis[t]).sum())
    scale = 1.0 if lcfg.loss_reduction == "sum" else 1.0 / (T * len(columns))
    return {
        "main/pg": torch.stack(pg).sum() * scale,
        "main/baseline": lcfg.baseline_coef * 0.5 * torch.stack(baseline).sum() * scale,
        "main/entropy": -lcfg.entropy_coef * torch.stack(entropy).sum() * scale,
    }


def reference_total(model, batch, lcfg, columns) -> torch.Tensor:
    return sum(reference_loss(model, batch, lcfg, columns).values())


def hand_made_batch(task_id=(0, 0, 0), T: int = 4, seed: int = 0) -> dict:
    """A collated batch with a termination, a truncation and an unroll that never ends.

    Column 0 terminates at t=1, column 1 is truncated at t=2 (all other steps continue), so
    every column's last step bootstraps from V(x_T); rewards are large enough that a wrong
    discount or bootstrap moves the loss by far more than float error.
    """
    rng = np.random.default_rng(seed)
    B = len(task_id)
    terminated = np.zeros((T, B), bool)
    truncated = np.zeros((T, B), bool)
    terminated[1, 0] = True
    truncated[2, 1 % B] = True
    return {
        "obs": rng.standard_normal((T + 1, B, 4)).astype(np.float32),
        "actions": rng.integers(0, 2, (T, B)).astype(np.int64),
        "rewards": (rng.standard_normal((T, B)) * 2.0 + 1.0).astype(np.float32),
        "terminated": terminated,
        "truncated": truncated,
        "behaviour_logits": (rng.standard_normal((T, B, 2)) * 1.5).astype(np.float32),
        "task_id": np.asarray(task_id, dtype=np.int64),
        "versions": np.zeros(1, np.int64),
        "episodes": np.zeros((0, 4)),
    }


def flat_grad(loss: torch.Tensor, params) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(params), allow_unused=True, retain_graph=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for g, p in zip(grads, params)])


def flat_dot_grad(params) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in params])
