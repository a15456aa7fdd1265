"""OL-AUX (paper 001 with the signs of paper 002): weight updates, log losses, and §5.1."""
import pytest
import torch

from combiners import OLAux, Sum


def vec(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_weights_move_by_lr_times_the_dot_products_summed_over_the_horizon():
    ol = OLAux(horizon=3, lr=0.1, log_losses=False, nonnegative=False)
    main = vec(1.0, 0.0)
    auxes = [vec(2.0, 1.0), vec(-1.0, 3.0), vec(0.5, 0.5)]   # dots with main: 2, -1, 0.5
    for t, aux in enumerate(auxes):
        G = torch.stack([main, aux, -aux])
        g, stats = ol.combine(G)
        torch.testing.assert_close(g, main)                     # w = 1 held within the horizon
        assert stats["w/aux1"] == 1.0 and stats["dot/aux2"] == pytest.approx(-float(aux[0]))
    w = ol.state_dict()["weights"]
    torch.testing.assert_close(w, vec(1 + 0.1 * 1.5, 1 - 0.1 * 1.5))
    g, _ = ol.combine(torch.stack([main, auxes[0], auxes[0]]))   # the next update uses the new w
    torch.testing.assert_close(g, main + (w[0] + w[1]) * auxes[0])


def test_nonnegative_clamps_at_zero():
    G = torch.stack([vec(1.0, 0.0), vec(-3.0, 0.0)])           # adversarial aux, dot = -3
    ol = OLAux(horizon=1, lr=1.0, log_losses=False)
    assert ol.weights is None                                  # created on the first update
    ol.combine(G)
    assert ol.weights.tolist() == [0.0]
    free = OLAux(horizon=1, lr=1.0, log_losses=False, nonnegative=False)
    free.combine(G)
    assert free.weights.tolist() == [-2.0]


def test_log_losses_use_the_gradient_of_log_aux_and_leave_main_alone():
    main, aux = vec(1.0, 2.0), vec(4.0, 0.0)
    losses = vec(-3.0, 2.0)                                    # a negative main RL loss is fine
    ol = OLAux(horizon=1, lr=0.5, log_losses=True)
    g, stats = ol.combine(torch.stack([main, aux]), losses)
    torch.testing.assert_close(g, main + aux / 2.0)            # ∇ log L_aux = ∇L_aux / L_aux
    assert stats["dot/aux1"] == pytest.approx(2.0)             # main · aux / L_aux
    torch.testing.assert_close(ol.weights, vec(1.0 + 0.5 * 2.0))
    # An aux loss that is not positive has no log: its row is left out (its dot too), counted.
    w_before = ol.weights
    g, stats = ol.combine(torch.stack([main, aux]), vec(1.0, 0.0))
    torch.testing.assert_close(g, main)
    assert stats["olaux/nonpositive"] == 1.0 and stats["dot/aux1"] == 0.0
    _, stats = ol.combine(torch.stack([main, aux]), vec(1.0, 4.0))
    assert stats["olaux/nonpositive"] == 0.0
    torch.testing.assert_close(ol.weights, w_before + 0.5 * 1.0)   # only the second dot, 4/4
    with pytest.raises(ValueError, match="loss values"):
        ol.combine(torch.stack([main, aux]))


def _run_toy(combiner, theta0, steps=1000, lr=0.05):
    """Paper 001 §5.1: L0 = x² + y² (main), L1 = (x − .5)² + (y − .5)², L2 = −L0."""
    theta, history = theta0.clone(), []
    for _ in range(steps):
        G = torch.stack([2 * theta, 2 * (theta - 0.5), -2 * theta])
        g, _ = combiner.combine(G)
        theta = theta - lr * g
        if isinstance(combiner, OLAux):
            history.append(combiner.weights)
    return theta, (torch.stack(history) if history else None)


@pytest.mark.parametrize("start", [(1.5, 1.5), (-1.5, 1.5), (1.5, -1.5), (-1.5, -1.5)])
def test_section_5_1_ignores_the_harmful_aux_and_finds_the_main_optimum(start):
    theta0 = vec(*start)
    # N = 1 and no log, as in the paper.
    theta, w = _run_toy(OLAux(horizon=1, lr=0.01, log_losses=False), theta0)
    w1, w2 = w[:, 0], w[:, 1]
    assert float(theta.norm()) < 1e-3                           # L0's optimum (0, 0)
    assert bool((w2[1:] <= w2[:-1]).all()) and float(w2[100]) == 0.0   # w2 falls, quickly
    peak = int(w1.argmax())
    assert float(w1[peak]) > 1.2 and 0 < peak < 200             # w1 first rises ...
    assert float(w1[-1]) < 0.05                                 # ... then falls
    # Fixed unit weights: L0 + L1 − L0 = L1, so descent settles at L1's optimum (.5, .5).
    theta_fixed, _ = _run_toy(Sum(), theta0)
    torch.testing.assert_close(theta_fixed, vec(0.5, 0.5))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="horizon"):
        OLAux(horizon=0)
    with pytest.raises(ValueError, match="lr"):
        OLAux(lr=-1.0)
    ol = OLAux(log_losses=False)
    ol.combine(torch.ones(3, 2))
    with pytest.raises(ValueError, match="aux terms"):
        ol.combine(torch.ones(2, 2))


def test_defaults_step_w_every_five_updates_by_a_hundredth_of_the_dots():
    ol = OLAux(log_losses=False)
    G = torch.stack([vec(1.0, 0.0), vec(2.0, 5.0)])            # dot = 2
    for _ in range(4):
        ol.combine(G)
    assert ol.weights.tolist() == [1.0]
    ol.combine(G)
    assert ol.weights.tolist() == [pytest.approx(1.0 + 0.01 * 5 * 2.0)]


def test_log_loss_scale_keeps_float64_precision():
    main, aux = vec(1.0, 2.0), vec(4.0, -1.0)
    ol = OLAux(horizon=1, lr=0.1)
    g, stats = ol.combine(torch.stack([main, aux]), vec(0.5, 3.0))   # 1/3: inexact in float32
    torch.testing.assert_close(g, main + aux / 3.0, rtol=1e-13, atol=0)
    assert stats["dot/aux1"] == pytest.approx(2.0 / 3.0, rel=1e-13)
