"""The IMPALA loss: named terms, their values and gradient signs, reduction and mask."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical

from learner.impala.loss import impala_loss, loss_terms, total_loss
from models.actor_critic import build_model
from learner.impala.vtrace import vtrace

MAIN_TERMS = {"main/pg", "main/baseline", "main/entropy"}


def random_batch(T=5, B=3, A=4, seed=0, done_prob=0.2):
    g = torch.Generator().manual_seed(seed)
    return dict(
        model_out_logits=torch.randn(T, B, A, generator=g).requires_grad_(),
        values=torch.randn(T, B, generator=g).requires_grad_(),
        bootstrap_value=torch.randn(B, generator=g),
        actions=torch.randint(0, A, (T, B), generator=g),
        behaviour_logits=torch.randn(T, B, A, generator=g),
        rewards=torch.randn(T, B, generator=g),
        discounts=0.99 * (torch.rand(T, B, generator=g) >= done_prob).float(),
    )


def test_term_names_and_detached_diagnostics():
    terms = impala_loss(**random_batch())
    assert set(loss_terms(terms)) == MAIN_TERMS
    stats = {k: v for k, v in terms.items() if k not in MAIN_TERMS}
    assert {"stats/rho_mean", "stats/entropy", "stats/vs_mean", "stats/clip_fraction"} <= set(stats)
    for key, value in terms.items():
        assert value.dim() == 0, key
        assert value.requires_grad == (key in MAIN_TERMS), key


def test_total_is_sum_of_terms():
    terms = impala_loss(**random_batch())
    expected = terms["main/pg"] + terms["main/baseline"] + terms["main/entropy"]
    torch.testing.assert_close(total_loss(terms), expected)
    # aux terms join the total; diagnostics never do.
    terms["aux/extra"] = torch.tensor(2.5)
    torch.testing.assert_close(total_loss(terms), expected + 2.5)
    with pytest.raises(ValueError):
        total_loss({"stats/entropy": torch.tensor(1.0)})


def test_term_values_against_independent_formulas():
    batch = random_batch()
    terms = impala_loss(**batch, baseline_coef=0.25, entropy_coef=0.03)
    logits, values = batch["model_out_logits"], batch["values"]

    entropy = Categorical(logits=logits.detach()).entropy()
    torch.testing.assert_close(terms["main/entropy"], -0.03 * entropy.sum())
    torch.testing.assert_close(terms["stats/entropy"], entropy.mean())

    log_pi = Categorical(logits=logits).log_prob(batch["actions"])
    log_mu = Categorical(logits=batch["behaviour_logits"]).log_prob(batch["actions"])
    vs, pg_advantages = vtrace(
        behaviour_logp=log_mu, target_logp=log_pi, rewards=batch["rewards"],
        discounts=batch["discounts"], values=values, bootstrap_value=batch["bootstrap_value"])
    torch.testing.assert_close(terms["main/pg"], -(log_pi * pg_advantages).sum())
    torch.testing.assert_close(terms["main/baseline"], 0.25 * 0.5 * ((vs - values) ** 2).sum())


@pytest.mark.parametrize("reward, sign", [(1.0, -1.0), (-1.0, 1.0)])
def test_pg_gradient_sign(reward, sign):
    # One step, episode ends: pg_advantage = rho (r - V). With r - V > 0, raising the
    # taken action's logit must lower the loss (negative gradient), and vice versa.
    A, action = 3, 1
    batch = dict(
        model_out_logits=torch.zeros(1, 1, A, requires_grad=True),
        values=torch.zeros(1, 1, requires_grad=True), bootstrap_value=torch.zeros(1),
        actions=torch.tensor([[action]]), behaviour_logits=torch.zeros(1, 1, A),
        rewards=torch.tensor([[reward]]), discounts=torch.zeros(1, 1))
    terms = impala_loss(**batch)
    terms["main/pg"].backward()
    grad = batch["model_out_logits"].grad[0, 0]
    assert sign * grad[action] > 0
    others = [a for a in range(A) if a != action]
    assert (sign * grad[others] < 0).all()


def test_gradients_reach_only_the_right_inputs():
    batch = random_batch()
    batch["bootstrap_value"].requires_grad_()
    terms = impala_loss(**batch)
    logits, values = batch["model_out_logits"], batch["values"]
    g_logits, g_values = torch.autograd.grad(terms["main/baseline"], [logits, values],
                                             allow_unused=True, retain_graph=True)
    assert g_logits is None and g_values.abs().sum() > 0
    g_logits, g_values = torch.autograd.grad(terms["main/pg"] + terms["main/entropy"],
                                             [logits, values], allow_unused=True,
                                             retain_graph=True)
    assert g_values is None and g_logits.abs().sum() > 0
    total_loss(terms).backward()
    assert batch["bootstrap_value"].grad is None  # a target, never trained through


def test_mean_reduction_divides_by_steps():
    batch = random_batch(T=5, B=3)
    summed = loss_terms(impala_loss(**batch, reduction="sum"))
    averaged = loss_terms(impala_loss(**batch, reduction="mean"))
    for key in MAIN_TERMS:
        torch.testing.assert_close(averaged[key], summed[key] / 15)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mask_equals_dropping_masked_columns(reduction):
    # V-trace runs per column, so masking column 1 must equal leaving it out of the batch.
    batch = random_batch(T=6, B=3)
    mask = torch.ones(6, 3)
    mask[:, 1] = 0.0
    masked = impala_loss(**batch, reduction=reduction, mask=mask)
    keep = [0, 2]
    dropped = impala_loss(**{k: v[:, keep] if v.dim() > 1 else v[keep]
                             for k, v in batch.items()}, reduction=reduction)
    for key in MAIN_TERMS | {"stats/entropy", "stats/vs_mean", "stats/rho_mean"}:
        torch.testing.assert_close(masked[key], dropped[key])
    total_loss(masked).backward()
    assert batch["model_out_logits"].grad[:, 1].abs().sum() == 0
    assert batch["values"].grad[:, 1].abs().sum() == 0


def test_bad_arguments_raise():
    batch = random_batch()
    with pytest.raises(ValueError, match="reduction"):
        impala_loss(**batch, reduction="max")
    with pytest.raises(ValueError, match="behaviour_logits"):
        impala_loss(**dict(batch, behaviour_logits=batch["behaviour_logits"][..., :-1]))
    with pytest.raises(ValueError, match="actions"):
        impala_loss(**dict(batch, actions=batch["actions"][:-1]))
    with pytest.raises(ValueError, match="mask"):
        impala_loss(**batch, mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match="rewards"):
        impala_loss(**dict(batch, rewards=batch["rewards"][:, :-1]))


def test_with_actor_critic_forward():
    T, B, A = 4, 2, 3
    model = build_model("mlp", (5,), num_actions=A)
    obs = torch.randn(T + 1, B, 5)
    logits, values = model(obs.reshape((T + 1) * B, 5))
    logits, values = logits.view(T + 1, B, A), values.view(T + 1, B)
    batch = random_batch(T, B, A)
    terms = impala_loss(logits[:T], values[:T], values[T].detach(), batch["actions"],
                        batch["behaviour_logits"], batch["rewards"], batch["discounts"])
    total_loss(terms).backward()
    assert all(p.grad is not None for p in model.parameters())
