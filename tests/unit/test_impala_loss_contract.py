"""The IMPALA loss's defaults and error messages, word for word: a default coefficient that
drifts from the paper's, or an error that stops naming what is wrong, fails here."""
from __future__ import annotations

import re

import pytest
import torch

from learner.impala.loss import impala_loss, total_loss


def batch(T=3, B=2, A=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(model_out_logits=torch.randn(T, B, A, generator=g), values=torch.randn(T, B, generator=g),
                bootstrap_value=torch.randn(B, generator=g), actions=torch.randint(0, A, (T, B), generator=g),
                behaviour_logits=torch.randn(T, B, A, generator=g), rewards=torch.randn(T, B, generator=g),
                discounts=torch.full((T, B), 0.9))


def test_defaults_are_the_papers_coefficients_and_clips():
    b = batch()
    default = impala_loss(**b)
    explicit = impala_loss(**b, baseline_coef=0.5, entropy_coef=0.01, clip_rho=1.0,
                           clip_pg_rho=1.0, clip_c=1.0, reduction="sum")
    for key in default:
        torch.testing.assert_close(default[key], explicit[key], msg=key)


def test_total_loss_names_the_keys_it_got():
    message = "no 'main/' or 'aux/' terms among ['stats/a', 'stats/b']"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        total_loss({"stats/b": torch.tensor(1.0), "stats/a": torch.tensor(2.0)})


@pytest.mark.parametrize("change,message", [
    (dict(model_out_logits=torch.zeros(3, 2)), "model_out_logits must be [T, B, A], got shape (3, 2)"),
    (dict(actions=torch.zeros(2, 2, dtype=torch.int64)),
     "actions has shape (2, 2), expected [T, B] = (3, 2)"),
    (dict(behaviour_logits=torch.zeros(3, 2, 2)),
     "behaviour_logits has shape (3, 2, 2), expected (3, 2, 3) like model_out_logits"),
])
def test_shape_errors_say_what_was_expected(change, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        impala_loss(**{**batch(), **change})


def test_the_clips_reach_v_trace():
    """Each clip changes the terms when it binds (ratios range widely in this batch)."""
    b = batch(T=6, B=4, seed=3)
    b["behaviour_logits"] = b["behaviour_logits"] * 3.0
    base = impala_loss(**b, clip_rho=1.0, clip_pg_rho=1.0, clip_c=1.0)
    for clip in ("clip_rho", "clip_pg_rho", "clip_c"):
        other = impala_loss(**b, **{**dict(clip_rho=1.0, clip_pg_rho=1.0, clip_c=1.0), clip: 0.2})
        changed = [k for k in ("main/pg", "main/baseline") if not torch.allclose(base[k], other[k])]
        assert changed, clip
    # clip_pg_rho only scales the policy-gradient advantage; the value targets stay.
    pg_only = impala_loss(**b, clip_pg_rho=0.2)
    torch.testing.assert_close(pg_only["main/baseline"], base["main/baseline"])


def test_diagnostics_are_exact_on_a_single_step():
    """T = B = 1: a mean over one step is that step, under either reduction."""
    b = batch(T=1, B=1, seed=5)
    b["behaviour_logits"] = b["model_out_logits"] + torch.tensor([0.0, 1.0, -1.0])
    terms = impala_loss(**b, reduction="mean")
    summed = impala_loss(**b, reduction="sum")
    for key in ("main/pg", "main/baseline", "main/entropy"):
        torch.testing.assert_close(terms[key], summed[key])
    log_pi = torch.log_softmax(b["model_out_logits"], -1)
    log_mu = torch.log_softmax(b["behaviour_logits"], -1)
    a = b["actions"][0, 0]
    ratio = torch.exp(log_pi[0, 0, a] - log_mu[0, 0, a])
    torch.testing.assert_close(terms["stats/rho_mean"], ratio)
    torch.testing.assert_close(terms["stats/value_mean"], b["values"][0, 0])
    assert set(terms) == {"main/pg", "main/baseline", "main/entropy", "stats/rho_mean",
                          "stats/clip_fraction", "stats/entropy", "stats/vs_mean",
                          "stats/value_mean", "stats/pg_advantage_mean"}


def test_clip_fraction_counts_ratios_strictly_above_rho_bar():
    b = batch(T=4, B=3, seed=6)
    b["behaviour_logits"] = b["model_out_logits"].clone()  # every ratio is exactly 1
    assert float(impala_loss(**b, clip_rho=1.0)["stats/clip_fraction"]) == 0.0
    assert float(impala_loss(**b, clip_rho=0.5)["stats/clip_fraction"]) == 1.0
    b["behaviour_logits"] = b["model_out_logits"] - 5.0 * torch.nn.functional.one_hot(
        b["actions"], 3)  # mu gives the taken action far less mass: ratios far above 1
    assert float(impala_loss(**b, clip_rho=None)["stats/clip_fraction"]) == 0.0
    assert float(impala_loss(**b, clip_rho=1.0)["stats/clip_fraction"]) == 1.0
