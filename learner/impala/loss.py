"""The IMPALA actor-critic loss with V-trace targets (Espeholt et al., 2018, Sec. 4.2).

For targets vs and advantages pg_advantages from `learner.vtrace` (both without gradient):

    main/pg       = - sum_{t,b} log pi(a_t|x_t) pg_advantage_t
    main/baseline = baseline_coef * 0.5 * sum_{t,b} (vs_t - V(x_t))^2
    main/entropy  = - entropy_coef * sum_{t,b} H(pi(.|x_t))

The terms come back by name and are never pre-summed: the caller (a gradient combiner) decides
how they mix; `total_loss` is their plain sum. Keys starting with "main/" or "aux/" are loss
terms; every other key ("stats/...") is a detached diagnostic.

Reduction: "sum" over T and B is the default because the IMPALA paper's hyper-parameters (RMSProp,
lr 6e-4, entropy 0.01, baseline 0.5) and torchbeast's implementation are stated for summed losses.
"mean" divides every term by the number of (unmasked) steps, which keeps the gradient scale fixed
across batch sizes and unroll lengths; its lr must then be about T*B times larger.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

from learner.impala.vtrace import vtrace

LOSS_PREFIXES = ("main/", "aux/")


def impala_loss(model_out_logits: torch.Tensor, values: torch.Tensor,
                bootstrap_value: torch.Tensor, actions: torch.Tensor,
                behaviour_logits: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor,
                *, baseline_coef: float = 0.5, entropy_coef: float = 0.01,
                clip_rho: float | None = 1.0, clip_pg_rho: float | None = 1.0,
                clip_c: float | None = 1.0, reduction: Literal["sum", "mean"] = "sum",
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Named IMPALA loss terms and diagnostics for one batch of unrolls.

    model_out_logits: pi's logits from the learner's forward pass, [T, B, A] (with gradient).
    values: V(x_t) from the same pass, [T, B] (with gradient).
    bootstrap_value: V(x_T), [B]; used only as a target.
    actions: a_t, [T, B] integer; behaviour_logits: mu's logits recorded by the actor, [T, B, A].
    rewards: r_t, [T, B]; discounts: gamma * (1 - done_t), [T, B].
    mask: optional [T, B], 1 for steps that count, 0 for padding. It weights the loss terms
        only; V-trace still runs over every step, so padded steps must sit after an episode
        end (discount 0) for them not to leak into the targets of real ones.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if model_out_logits.dim() != 3:
        raise ValueError(f"model_out_logits must be [T, B, A], got shape "
                         f"{tuple(model_out_logits.shape)}")
    if behaviour_logits.shape != model_out_logits.shape:
        raise ValueError(f"behaviour_logits has shape {tuple(behaviour_logits.shape)}, expected "
                         f"{tuple(model_out_logits.shape)} like model_out_logits")
    if actions.shape != model_out_logits.shape[:2]:
        raise ValueError(f"actions has shape {tuple(actions.shape)}, expected [T, B] = "
                         f"{tuple(model_out_logits.shape[:2])}")
    if mask is not None and mask.shape != values.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected [T, B] = "
                         f"{tuple(values.shape)}")

    log_pi = F.log_softmax(model_out_logits, dim=-1)
    actions = actions.long().unsqueeze(-1)
    target_logp = log_pi.gather(-1, actions).squeeze(-1)
    behaviour_logp = F.log_softmax(behaviour_logits.detach().to(log_pi.dtype), dim=-1) \
        .gather(-1, actions).squeeze(-1)

    vs, pg_advantages = vtrace(
        behaviour_logp=behaviour_logp, target_logp=target_logp, rewards=rewards,
        discounts=discounts, values=values, bootstrap_value=bootstrap_value,
        clip_rho=clip_rho, clip_pg_rho=clip_pg_rho, clip_c=clip_c)
    entropy = -(log_pi.exp() * log_pi).sum(-1)  # H(pi(.|x_t)), [T, B]

    weights = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    count = weights.sum().detach()
    scale = 1.0 if reduction == "sum" else 1.0 / count.clamp(min=1.0)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        return (x * weights).sum() * scale

    terms = {
        "main/pg": -reduce(target_logp * pg_advantages),
        "main/baseline": baseline_coef * 0.5 * reduce((vs - values) ** 2),
        "main/entropy": -entropy_coef * reduce(entropy),
    }

    with torch.no_grad():
        def mean(x: torch.Tensor) -> torch.Tensor:
            return (x * weights).sum() / count.clamp(min=1.0)

        ratios = torch.exp(target_logp - behaviour_logp)
        clipped = (torch.zeros_like(ratios) if clip_rho is None
                   else (ratios > clip_rho).to(ratios.dtype))
        terms.update({
            "stats/rho_mean": mean(ratios),
            "stats/clip_fraction": mean(clipped),
            "stats/entropy": mean(entropy),
            "stats/vs_mean": mean(vs),
            "stats/value_mean": mean(values),
            "stats/pg_advantage_mean": mean(pg_advantages),
        })
    return terms


def loss_terms(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The loss terms of `terms`: the keys starting with "main/" or "aux/"."""
    return {k: v for k, v in terms.items() if k.startswith(LOSS_PREFIXES)}


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain sum of the loss terms (diagnostics excluded)."""
    losses = loss_terms(terms)
    if not losses:
        raise ValueError(f"no 'main/' or 'aux/' terms among {sorted(terms)}")
    return sum(losses.values())
