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
