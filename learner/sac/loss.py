"""SAC's three objectives for one task's rows, as named terms (Haarnoja et al., 2018, "Soft
Actor-Critic Algorithms and Applications", Eqs. 5, 7 and 18), with the per-task temperature
α_k of the multi-task setting of papers 003 and 004.

    critic:  J_Q  = Σ_{i=1,2} mean (Q_i(s, a) − y)²,
             y    = scale · r + γ (1 − terminated) (min_j Q̄_j(s′, a′) − α_k log π(a′|s′)),
             a′ ~ π(·|s′), Q̄ the target critics; y carries no gradient.
    actor:   J_π  = mean (α_k log π(ã|s) − min_j Q_j(s, ã)),   ã ~ π(·|s) reparameterised.
    alpha:   J(α) = −mean (log α_k · (log π(ã|s) + H̄)),         log π detached, H̄ the target
             entropy (−|A| by default).

Only `terminated` cuts the bootstrap: a time-limit truncation is not an end of the MDP, so the
TD target still bootstraps from s′ (the replay keeps the true final observation). α is a
constant in the critic and actor terms and Q a constant of the alpha term: each term trains
only its own network. Diagnostics are under "stats/" and are detached.

Each function takes plain tensors of shape [..., n]: the rows last, any leading axes kept. The
learner passes task-major [K, n] tensors (α as [K, 1]) and gets every task's term, [K], from one
batched evaluation; inside `torch.func.vmap` over tasks (the per-task gradients of PCGrad) the
same functions see one task's [n] rows. Means are over the rows only, so task k's term reads
only its own rows either way.
"""
from __future__ import annotations

import torch


def _check_rows(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) < 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"SAC loss inputs must all be [..., n] of one shape (rows last); "
                         f"got {shapes}")


def td_target(reward: torch.Tensor, terminated: torch.Tensor, next_q1: torch.Tensor,
              next_q2: torch.Tensor, next_log_prob: torch.Tensor, alpha: torch.Tensor, *,
              discount: float, reward_scale: float = 1.0) -> torch.Tensor:
    """y = scale·r + γ (1 − terminated)(min_j Q̄_j(s′, a′) − α log π(a′|s′)), no gradient."""
    _check_rows(reward=reward, terminated=terminated, next_q1=next_q1, next_q2=next_q2,
                next_log_prob=next_log_prob)
    soft_value = torch.minimum(next_q1, next_q2) - alpha * next_log_prob
    not_done = 1.0 - terminated.to(reward.dtype)
    return (reward_scale * reward + discount * not_done * soft_value).detach()


def critic_loss(q1: torch.Tensor, q2: torch.Tensor, reward: torch.Tensor,
                terminated: torch.Tensor, next_q1: torch.Tensor, next_q2: torch.Tensor,
                next_log_prob: torch.Tensor, alpha: torch.Tensor, *, discount: float,
                reward_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """{"critic": J_Q, "stats/q1", "stats/q2", "stats/target"} (the stats are means)."""
    _check_rows(q1=q1, q2=q2, reward=reward)
    y = td_target(reward, terminated, next_q1, next_q2, next_log_prob, alpha.detach(),
                  discount=discount, reward_scale=reward_scale)
    return {
        "critic": (q1 - y).pow(2).mean(-1) + (q2 - y).pow(2).mean(-1),
        "stats/q1": q1.detach().mean(-1),
        "stats/q2": q2.detach().mean(-1),
        "stats/target": y.mean(-1),
    }


def actor_loss(log_prob: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor,
               alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"actor": J_π, "stats/entropy": −mean log π(ã|s)}; Q_j(s, ã) from the current critics."""
    _check_rows(log_prob=log_prob, q1=q1, q2=q2)
    return {
        "actor": (alpha.detach() * log_prob - torch.minimum(q1, q2)).mean(-1),
        "stats/entropy": -log_prob.detach().mean(-1),
    }


def alpha_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor,
               target_entropy: float) -> dict[str, torch.Tensor]:
    """{"alpha": J(α), "stats/alpha": α}; `log_alpha` holds one log α_k per leading index of
    `log_prob` (a scalar for one task's [n] rows, [K] for [K, n])."""
    _check_rows(log_prob=log_prob)
    if tuple(log_alpha.shape) != tuple(log_prob.shape[:-1]):
        raise ValueError(f"log_alpha must have one entry per task, shape {tuple(log_prob.shape[:-1])}; "
                         f"got {tuple(log_alpha.shape)}")
    return {
        "alpha": -(log_alpha[..., None] * (log_prob.detach() + target_entropy)).mean(-1),
        "stats/alpha": log_alpha.detach().exp(),
    }
