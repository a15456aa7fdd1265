"""Sum's statistics and input checks: a norm per term under the term's name, the combined norm,
and the shape checks every combiner shares."""
from __future__ import annotations

import pytest
import torch

from combiners.sum import Sum

G = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0]])


def test_a_norm_per_term_under_its_name_and_the_combined_norm():
    g, stats = Sum().combine(G, names=["breakout", "pong", "seaquest"])
    assert torch.equal(g, G.sum(0))
    assert stats == pytest.approx({"norm/breakout": 5.0, "norm/pong": 2.0, "norm/seaquest": 1.0,
                                   "norm/combined": float(torch.linalg.vector_norm(G.sum(0)))})


def test_terms_without_names_are_numbered_tasks():
    _, stats = Sum([1.0, 2.0, 0.5]).combine(G)
    assert sorted(stats) == ["norm/combined", "norm/task0", "norm/task1", "norm/task2"]
    assert stats["norm/combined"] == pytest.approx(float(torch.linalg.vector_norm(
        torch.tensor([3.5, 4.0, 4.0]))))


def test_losses_and_layout_are_checked_against_g():
    with pytest.raises(ValueError, match=r"losses must have shape \[3\]"):
        Sum().combine(G, losses=torch.zeros(2))
    with pytest.raises(ValueError, match="layout covers 2 columns but G has 3"):
        Sum().combine(G, layout=[("torso", 0, 2)])
