"""PCGrad (paper 003, Alg. 1) against a plain loop written from the paper."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from combiners import PCGrad, pcgrad_coefficients, pcgrad_project


def pcgrad_brute(G: torch.Tensor, orders) -> torch.Tensor:
    """Alg. 1 as written: for each i, over j in its order, project g_i on the normal plane of
    the original g_j when g_i · g_j < 0."""
    out = []
    for i in range(G.shape[0]):
        g_i = G[i].clone()
        for j in orders[i]:
            g_j = G[j]
            dot = torch.dot(g_i, g_j)
            if dot < 0:
                g_i = g_i - dot / torch.dot(g_j, g_j) * g_j
        out.append(g_i)
    return torch.stack(out)


# Entries are small integers (exact ties, zeros, parallel and orthogonal rows) or floats with
# three decimals (no subnormal magnitudes, whose squares would underflow in the reference).
entry = st.one_of(
    st.integers(-4, 4).map(float),
    st.floats(-10, 10, allow_nan=False, allow_infinity=False).map(lambda x: round(x, 3)))


@st.composite
def gradient_matrices(draw):
    K = draw(st.integers(1, 10))
    P = draw(st.integers(1, 12))
    values = draw(st.lists(entry, min_size=K * P, max_size=K * P))
    return torch.tensor(values, dtype=torch.float64).reshape(K, P)


@settings(max_examples=300, deadline=None)
@given(G=gradient_matrices(), seed=st.integers(0, 2**31 - 1))
def test_matches_brute_force_with_same_orders(G, seed):
    pc = PCGrad(seed=seed)
    g, stats = pc.combine(G)
    orders = pc.last_orders
    K = G.shape[0]
    for i in range(K):   # each order is a permutation of the other tasks
        assert sorted(orders[i].tolist()) == [j for j in range(K) if j != i]
    ref_rows = pcgrad_brute(G, orders)
    scale = max(1.0, float(G.abs().max()))
    torch.testing.assert_close(pcgrad_project(G, orders), ref_rows, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(g, ref_rows.sum(0), rtol=1e-9, atol=1e-8 * scale)
    dots = G @ G.T
    assert stats["pcgrad/conflicts"] == int((dots.triu(1) < 0).sum())
    assert np.isfinite(list(stats.values())).all()


def test_two_tasks_projection_is_orthogonal_to_the_other_original():
    torch.manual_seed(0)
    for _ in range(20):
        g1 = torch.randn(30, dtype=torch.float64)
        g2 = -g1 + 0.5 * torch.randn(30, dtype=torch.float64)
        assert torch.dot(g1, g2) < 0
        G = torch.stack([g1, g2])
        rows = pcgrad_project(G, [[1], [0]])
        assert abs(float(torch.dot(rows[0], g2))) < 1e-10
        assert abs(float(torch.dot(rows[1], g1))) < 1e-10
        g, stats = PCGrad(seed=0).combine(G)
        torch.testing.assert_close(g, rows.sum(0))
        assert stats["pcgrad/conflicts"] == 1 and stats["pcgrad/projections"] == 2


def test_non_conflicting_rows_are_unchanged():
    torch.manual_seed(1)
    G = torch.rand(6, 40, dtype=torch.float64)   # positive entries: no pair conflicts
    g, stats = PCGrad(seed=3).combine(G)
    torch.testing.assert_close(g, G.sum(0))
    assert stats["pcgrad/conflicts"] == 0 and stats["pcgrad/projections"] == 0
    # Rows 0 and 1 conflict; row 2 agrees with both and must come out untouched.
    H = torch.tensor([[1.0, 0.0, 1.0], [-2.0, 0.2, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    rows = pcgrad_project(H, [[1, 2], [0, 2], [0, 1]])
    torch.testing.assert_close(rows[2], H[2])
    assert not torch.allclose(rows[0], H[0]) and not torch.allclose(rows[1], H[1])


def test_zero_rows_are_safe():
    G = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    pc = PCGrad(seed=7)
    g, stats = pc.combine(G)
    rows = pcgrad_project(G, pc.last_orders)
    assert torch.isfinite(rows).all() and torch.isfinite(g).all()
    assert torch.equal(rows[1], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(rows, pcgrad_brute(G, pc.last_orders))
    assert all(np.isfinite(v) for v in stats.values())
    g0, _ = PCGrad(seed=0).combine(torch.zeros(4, 5))
    assert torch.equal(g0, torch.zeros(5))


def test_mean_reduction_and_stats():
    torch.manual_seed(2)
    G = torch.randn(5, 20, dtype=torch.float64)
    g_sum, stats = PCGrad(reduction="sum", seed=11).combine(G)
    g_mean, _ = PCGrad(reduction="mean", seed=11).combine(G)
    torch.testing.assert_close(g_mean, g_sum / 5)
    unit = G / G.norm(dim=1, keepdim=True)
    cos = (unit @ unit.T)[torch.triu_indices(5, 5, 1).unbind()]
    assert stats["pcgrad/mean_cos"] == pytest.approx(float(cos.mean()))
    assert stats["norm/combined"] == pytest.approx(float(g_sum.norm()))
    assert stats["norm/task3"] == pytest.approx(float(G[3].norm()))


def test_orders_come_from_the_seeded_generator():
    a, b, c = PCGrad(seed=5), PCGrad(seed=5), PCGrad(seed=6)
    oa, ob, oc = a.sample_orders(8), b.sample_orders(8), c.sample_orders(8)
    assert np.array_equal(oa, ob) and not np.array_equal(oa, oc)
    assert not np.array_equal(oa, a.sample_orders(8))   # fresh orders every update


def test_large_k_matches_brute_force_in_float32():
    torch.manual_seed(3)
    G = torch.randn(50, 200)
    pc = PCGrad(seed=0)
    g, _ = pc.combine(G)
    ref = pcgrad_brute(G.double(), pc.last_orders).sum(0).float()
    torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-4)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        PCGrad(reduction="max")
    with pytest.raises(ValueError, match="G must be"):
        PCGrad().combine(torch.zeros(3))
    with pytest.raises(ValueError, match="losses"):
        PCGrad().combine(torch.zeros(3, 4), losses=torch.zeros(2))


def test_a_single_task_passes_through_with_empty_stats():
    pc = PCGrad(seed=0)
    assert pc.last_orders is None                        # nothing combined yet
    g, stats = pc.combine(torch.tensor([[3.0, -4.0]], dtype=torch.float64))
    assert torch.equal(g, torch.tensor([3.0, -4.0], dtype=torch.float64))
    assert stats == {"pcgrad/conflicts": 0.0, "pcgrad/pairs": 0.0, "pcgrad/projections": 0.0,
                     "pcgrad/mean_cos": 0.0, "norm/task0": 5.0, "norm/combined": 5.0}
    assert pc.last_orders.shape == (1, 0)


def test_stats_of_gradients_shorter_than_one():
    # Norms below 1 (so products of norms and squared norms are below 1 too).
    G = 1e-2 * torch.tensor([[3.0, 4.0, 0.0], [0.0, 4.0, 3.0], [-3.0, 0.0, 4.0]],
                            dtype=torch.float64)
    g, stats = PCGrad(seed=1).combine(G, names=["reach", "push", "pick"])
    unit = G / G.norm(dim=1, keepdim=True)
    cos = (unit @ unit.T)[torch.triu_indices(3, 3, 1).unbind()]
    assert stats["pcgrad/mean_cos"] == pytest.approx(float(cos.mean()))
    assert stats["norm/push"] == pytest.approx(0.05)
    assert stats["norm/combined"] == pytest.approx(float(g.norm()))
    assert float(g.norm()) < 1


def test_project_keeps_the_gradients_dtype():
    torch.manual_seed(4)
    G = torch.randn(4, 10)
    orders = PCGrad(seed=2).sample_orders(4)
    rows = pcgrad_project(G, orders)
    assert rows.dtype == torch.float32
    torch.testing.assert_close(rows, pcgrad_brute(G.double(), orders).float(),
                               rtol=1e-5, atol=1e-5)


def test_coefficients_accept_an_integer_gram_matrix():
    G = torch.tensor([[2, 0, 1], [-1, 1, 0], [0, -2, 1]])
    orders = np.array([[1, 2], [2, 0], [0, 1]])
    A_int, n_int = pcgrad_coefficients((G @ G.T).tolist(), orders)
    A, n = pcgrad_coefficients((G @ G.T).double().numpy(), orders)
    assert A_int.dtype == torch.float64 and n_int == n > 0
    torch.testing.assert_close(A_int, A)


def test_layout_must_match_the_gradients():
    with pytest.raises(ValueError, match="layout covers 3 columns but G has 4"):
        PCGrad().combine(torch.zeros(2, 4), layout=[("a", 0, 3)])


def test_repr_names_reduction_and_seed():
    assert repr(PCGrad(reduction="mean", seed=3)) == "PCGrad(reduction='mean', seed=3)"
