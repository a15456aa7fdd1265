"""The helpers every combiner shares: the input checks and their messages, the default names
of the terms, and the norms read off the Gram matrix."""
from __future__ import annotations

import pytest
import torch

from combiners.base import check_inputs, norm_stats, term_names


def test_g_that_is_no_floating_matrix_or_is_empty_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^G must be a floating \[K, P\] tensor, got <class 'list'>$"):
        check_inputs([[1.0]], None, None)
    with pytest.raises(ValueError, match=r"^G must be a floating \[K, P\] tensor, got torch.Size\(\[3\]\)$"):
        check_inputs(torch.zeros(3), None, None)
    for shape in [(0, 3), (2, 0)]:
        with pytest.raises(ValueError) as error:
            check_inputs(torch.zeros(shape), None, None)
        assert str(error.value) == f"G must have at least one row and one column, got {shape}"


def test_terms_are_named_main_and_aux_or_by_task_unless_named():
    assert term_names(3, None, "main_aux") == ["main", "aux1", "aux2"]
    assert term_names(2, None, "peers") == ["task0", "task1"]
    assert term_names(2, ("pong", 7), "peers") == ["pong", "7"]
    with pytest.raises(ValueError, match="^got 1 names for 2 rows of G$"):
        term_names(2, ["pong"], "peers")


def test_norms_below_one_come_out_as_they_are():
    G = torch.tensor([[0.3, 0.4], [0.0, 0.1]], dtype=torch.float64)
    w = torch.tensor([1.0, 1.0], dtype=torch.float64)
    stats = norm_stats(G @ G.T, w, ["a", "b"])
    assert stats == pytest.approx({"norm/a": 0.5, "norm/b": 0.1,
                                   "norm/combined": float(torch.linalg.vector_norm(G.sum(0)))})
