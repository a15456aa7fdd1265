"""V-trace against a plain loop written from the IMPALA paper's definitions (eq. 1, Sec. 4.2)."""
from __future__ import annotations

import math

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.impala.vtrace import vtrace


def _clip(x: float, threshold: float | None) -> float:
    return x if threshold is None else min(threshold, x)


def reference_vtrace(behaviour_logp, target_logp, rewards, discounts, values, bootstrap_value,
                     clip_rho, clip_pg_rho, clip_c):
    """Eq. 1 as an explicit sum of products, on Python floats (float64), one column at a time:

        v_s = V(x_s) + sum_{t=s}^{T-1} (prod_{i=s}^{t-1} gamma_i c_i) delta_t,
        delta_t = rho_t (r_t + gamma_t V(x_{t+1}) - V(x_t)),  V(x_T) = bootstrap,

    where the paper's gamma^{t-s} becomes prod_{i=s}^{t-1} gamma_i for per-step discounts; and
    pg_advantage_s = min(rho_bar_pg, pi/mu) (r_s + gamma_s v_{s+1} - V(x_s)) with v_T = V(x_T).
    """
    T, B = len(rewards), len(bootstrap_value)
    vs = [[0.0] * B for _ in range(T)]
    pg_advantages = [[0.0] * B for _ in range(T)]
    for b in range(B):
        V = [values[t][b] for t in range(T)] + [bootstrap_value[b]]
        r = [rewards[t][b] for t in range(T)]
        gamma = [discounts[t][b] for t in range(T)]
        ratio = [math.exp(target_logp[t][b] - behaviour_logp[t][b]) for t in range(T)]
        rho = [_clip(x, clip_rho) for x in ratio]
        c = [_clip(x, clip_c) for x in ratio]
        delta = [rho[t] * (r[t] + gamma[t] * V[t + 1] - V[t]) for t in range(T)]
        for s in range(T):
            vs[s][b] = V[s] + sum(
                math.prod(gamma[i] * c[i] for i in range(s, t)) * delta[t] for t in range(s, T))
        v_next = [vs[s + 1][b] for s in range(T - 1)] + [bootstrap_value[b]]
        for s in range(T):
            pg_advantages[s][b] = _clip(ratio[s], clip_pg_rho) * (
                r[s] + gamma[s] * v_next[s] - V[s])
    return torch.tensor(vs, dtype=torch.float64), torch.tensor(pg_advantages, dtype=torch.float64)


def random_unroll(T, B, seed, gamma=0.99, done_prob=0.0, log_ratio_scale=1.0,
                  dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    behaviour_logp = -3.0 * torch.rand(T, B, generator=g, dtype=torch.float64)
    target_logp = behaviour_logp + log_ratio_scale * torch.randn(T, B, generator=g,
                                                                 dtype=torch.float64)
    not_done = (torch.rand(T, B, generator=g, dtype=torch.float64) >= done_prob).double()
    return dict(
        behaviour_logp=behaviour_logp.to(dtype), target_logp=target_logp.to(dtype),
        rewards=torch.randn(T, B, generator=g, dtype=torch.float64).to(dtype),
        discounts=(gamma * not_done).to(dtype),
        values=torch.randn(T, B, generator=g, dtype=torch.float64).to(dtype),
        bootstrap_value=torch.randn(B, generator=g, dtype=torch.float64).to(dtype),
    )


clip_thresholds = st.one_of(st.none(), st.sampled_from([0.3, 1.0, 2.5]),
                            st.floats(0.05, 5.0))


@settings(max_examples=150, deadline=None)
@given(T=st.integers(1, 12), B=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
       gamma=st.floats(0.0, 1.0), done_prob=st.sampled_from([0.0, 0.2, 0.6]),
       log_ratio_scale=st.sampled_from([0.0, 0.3, 1.0]),
       clip_rho=clip_thresholds, clip_pg_rho=clip_thresholds, clip_c=clip_thresholds)
def test_vtrace_matches_paper_loop(T, B, seed, gamma, done_prob, log_ratio_scale,
                                   clip_rho, clip_pg_rho, clip_c):
    clips = dict(clip_rho=clip_rho, clip_pg_rho=clip_pg_rho, clip_c=clip_c)
    inputs = random_unroll(T, B, seed, gamma, done_prob, log_ratio_scale, dtype=torch.float64)
    ref_vs, ref_adv = reference_vtrace(*(inputs[k].tolist() for k in (
        "behaviour_logp", "target_logp", "rewards", "discounts", "values", "bootstrap_value")),
        **clips)
    # Unclipped traces can grow large; compare relative to the problem's scale.
    scale = max(1.0, ref_vs.abs().max().item(), ref_adv.abs().max().item())

    vs, pg_advantages = vtrace(**inputs, **clips)
    torch.testing.assert_close(vs, ref_vs, rtol=1e-10, atol=1e-10 * scale)
    torch.testing.assert_close(pg_advantages, ref_adv, rtol=1e-10, atol=1e-10 * scale)

    # Training dtype: float32 in, float32 out, still within 1e-5 of the float64 reference.
    vs32, adv32 = vtrace(**{k: v.float() for k, v in inputs.items()}, **clips)
    assert vs32.dtype == adv32.dtype == torch.float32
    torch.testing.assert_close(vs32.double(), ref_vs, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(adv32.double(), ref_adv, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("clips", [dict(clip_rho=None, clip_pg_rho=None, clip_c=None), {}])
def test_on_policy_reduces_to_n_step_bellman_target(clips):
    T, B, gamma = 7, 3, 0.9
    inputs = random_unroll(T, B, seed=3, gamma=gamma, log_ratio_scale=0.0,
                           dtype=torch.float64)
    r, V, bootstrap = inputs["rewards"], inputs["values"], inputs["bootstrap_value"]
    # v_s = sum_{t=s}^{T-1} gamma^{t-s} r_t + gamma^{T-s} V(x_T)
    expected = torch.stack([
        sum(gamma ** (t - s) * r[t] for t in range(s, T)) + gamma ** (T - s) * bootstrap
        for s in range(T)])

    vs, pg_advantages = vtrace(**inputs, **clips)
    torch.testing.assert_close(vs, expected)
    torch.testing.assert_close(pg_advantages, expected - V)


def test_episode_end_cuts_the_trace():
    inputs = random_unroll(5, 2, seed=0, log_ratio_scale=0.5)
    inputs["discounts"][2] = 0.0
    vs, _ = vtrace(**inputs)
    changed = dict(inputs, rewards=inputs["rewards"].clone(),
                   bootstrap_value=inputs["bootstrap_value"] + 10.0)
    changed["rewards"][3:] += 10.0
    vs_changed, _ = vtrace(**changed)
    torch.testing.assert_close(vs[:3], vs_changed[:3])
    assert not torch.allclose(vs[3:], vs_changed[3:])


SHAPE_ERRORS = {  # T = 4, B = 3; the named argument lost its last row
    "behaviour_logp": "behaviour_logp has shape (3, 3), expected [T, B] = (4, 3) like values",
    "target_logp": "target_logp has shape (3, 3), expected [T, B] = (4, 3) like values",
    "rewards": "rewards has shape (3, 3), expected [T, B] = (4, 3) like values",
    "discounts": "discounts has shape (3, 3), expected [T, B] = (4, 3) like values",
    "values": "behaviour_logp has shape (4, 3), expected [T, B] = (3, 3) like values",
    "bootstrap_value": "bootstrap_value has shape (2,), expected [B] = (3,) (values is (4, 3))",
}


@pytest.mark.parametrize("name", list(SHAPE_ERRORS))
def test_shape_mismatch_raises_naming_the_argument(name):
    inputs = random_unroll(4, 3, seed=0)
    inputs[name] = inputs[name][:-1]
    with pytest.raises(ValueError, match=f"^{re.escape(SHAPE_ERRORS[name])}$"):
        vtrace(**inputs)


def test_values_must_be_two_dimensional():
    inputs = random_unroll(4, 3, seed=0)
    inputs["values"] = inputs["values"].reshape(-1)
    with pytest.raises(ValueError, match=re.escape("values must be [T, B], got shape (12,)")):
        vtrace(**inputs)


def test_outputs_carry_no_gradient():
    inputs = {k: v.requires_grad_() for k, v in random_unroll(6, 4, seed=1).items()}
    vs, pg_advantages = vtrace(**inputs)
    for out in (vs, pg_advantages):
        assert not out.requires_grad and out.grad_fn is None
    # The inputs themselves are untouched and still differentiable.
    inputs["values"].sum().backward()
    assert inputs["values"].grad is not None
