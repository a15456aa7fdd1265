"""CosineGate (paper 000): gating rules, per-layer vs global cosine, smoothing, intervals, and
the toy problems of Fig. 1."""
import math

import pytest
import torch

from combiners import CosineGate, Layout, Sum


def vec(*xs):
    return torch.tensor(xs, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["unweighted", "weighted"])
def test_opposed_aux_is_ignored_and_aligned_aux_is_added(mode):
    g = vec(1.0, -2.0, 3.0)
    out, stats = CosineGate(mode=mode, ema=0.0).combine(torch.stack([g, -g]))
    torch.testing.assert_close(out, g)
    assert stats["gate/aux1"] == 0.0 and stats["cos/aux1"] == pytest.approx(-1.0)
    out, stats = CosineGate(mode=mode, ema=0.0).combine(torch.stack([g, 0.5 * g]))
    torch.testing.assert_close(out, 1.5 * g)
    assert stats["gate/aux1"] == 1.0


def test_weighted_scales_by_cosine_and_unweighted_by_threshold():
    main, aux = vec(1.0, 0.0), vec(0.6, 0.8)          # cos = 0.6
    out, stats = CosineGate(mode="weighted", ema=0.0).combine(torch.stack([main, aux]))
    torch.testing.assert_close(out, main + 0.6 * aux)
    assert stats["gate/aux1"] == pytest.approx(0.6)
    out, _ = CosineGate(ema=0.0, threshold=0.7).combine(torch.stack([main, aux]))
    torch.testing.assert_close(out, main)
    out, _ = CosineGate(ema=0.0, threshold=0.5).combine(torch.stack([main, aux]))
    torch.testing.assert_close(out, main + aux)


def test_per_layer_and_global_decisions_differ():
    # Layer "a" (2 columns): aux agrees with main (cos 1). Layer "b": cos -0.5 but 10x larger,
    # so it dominates the global cosine (negative) while the layer mean is (1 - 0.5) / 2 > 0.
    main = vec(1.0, 0.0, 10.0, 0.0)
    aux = vec(1.0, 0.0, -5.0, 10.0 * math.sqrt(3) / 2)
    G = torch.stack([main, aux])
    layout = Layout([("a", 0, 2), ("b", 2, 4)])
    out, stats = CosineGate(ema=0.0, per_layer=True).combine(G, layout=layout)
    assert stats["cos/aux1"] == pytest.approx(0.25)
    assert stats["cos_now/aux1/a"] == pytest.approx(1.0)
    assert stats["cos_now/aux1/b"] == pytest.approx(-0.5)
    torch.testing.assert_close(out, main + aux)
    out, stats = CosineGate(ema=0.0, per_layer=False).combine(G, layout=layout)
    assert stats["cos/aux1"] < 0
    torch.testing.assert_close(out, main)


def test_layers_without_gradient_are_left_out_of_the_mean():
    main = vec(1.0, 2.0, 0.0, 0.0)      # main does not reach layer "b"
    aux = vec(1.0, 2.0, 3.0, 4.0)
    _, stats = CosineGate(ema=0.0).combine(torch.stack([main, aux]),
                                           layout=[("a", 0, 2), ("b", 2, 4)])
    assert stats["cos/aux1"] == pytest.approx(1.0)


def test_single_noisy_flip_is_absorbed_by_the_moving_average():
    g = vec(1.0, 2.0, -1.0)
    smooth, raw = CosineGate(ema=0.9), CosineGate(ema=0.0)
    for _ in range(30):
        smooth.combine(torch.stack([g, g]))
        raw.combine(torch.stack([g, g]))
    flip = torch.stack([g, -g])
    out, stats = smooth.combine(flip)
    assert stats["gate/aux1"] == 1.0 and stats["cos_now/aux1"] == pytest.approx(-1.0)
    # Debiased EMA of thirty +1 and one -1: (0.9 c_30 + 0.1 (-1)) / (1 - 0.9^31), c_30 = 1 - 0.9^30.
    assert stats["cos/aux1"] == pytest.approx((0.9 * (1 - 0.9**30) - 0.1) / (1 - 0.9**31))
    torch.testing.assert_close(out, g - g)
    _, stats = raw.combine(flip)
    assert stats["gate/aux1"] == 0.0
    for _ in range(15):                              # a lasting change does turn it off
        _, stats = smooth.combine(flip)
    assert stats["gate/aux1"] == 0.0


def test_first_measurement_sets_the_average():
    main, aux = vec(1.0, 0.0), vec(0.5, math.sqrt(3) / 2)   # cos = 0.5
    gate = CosineGate(ema=0.999)
    _, stats = gate.combine(torch.stack([main, aux]))
    assert stats["cos/aux1"] == pytest.approx(0.5)          # not 0.001 * 0.5
    _, stats = gate.combine(torch.stack([main, -aux]))      # debiased mean of 0.5 and -0.5
    assert stats["cos/aux1"] == pytest.approx((0.999 * 0.5 - 0.5) / (1 + 0.999))


def test_every_k_holds_the_gate_between_measurements():
    g = vec(2.0, 1.0)
    aligned, opposed = torch.stack([g, g]), torch.stack([g, -g])
    gate = CosineGate(ema=0.0, every=3)
    assert gate.fixed_weights(2) is None                    # update 0 measures
    out, stats = gate.combine(aligned)
    assert stats["gate/measured"] == 1.0 and stats["gate/aux1"] == 1.0
    for _ in range(2):                                      # updates 1, 2: held, even if opposed
        assert gate.fixed_weights(2).tolist() == [1.0, 1.0]
        out, stats = gate.combine(opposed)
        assert stats["gate/measured"] == 0.0 and stats["gate/aux1"] == 1.0
        torch.testing.assert_close(out, g - g)
    assert gate.fixed_weights(2) is None                    # update 3 measures again
    out, stats = gate.combine(opposed)
    assert stats["gate/measured"] == 1.0 and stats["gate/aux1"] == 0.0
    torch.testing.assert_close(out, g)
    stats = gate.record_fixed()                             # update 4 made by the caller
    assert stats["gate/aux1"] == 0.0
    gate.record_fixed()
    with pytest.raises(RuntimeError):                       # update 6 must measure
        gate.record_fixed()


def _descend(combiner, grads, theta, steps=600, lr=0.01):
    """Steepest descent with the combined gradient (paper 000, Fig. 1 setup)."""
    theta = theta.clone()
    for _ in range(steps):
        g, _ = combiner.combine(torch.stack([f(theta) for f in grads]))
        theta = theta - lr * g
    return theta


def test_fig1_helpful_aux_both_variants_reach_the_main_optimum():
    # L1 = θ1² + θ2² (main), L2 = (θ1 − 1)² + (θ2 − 1)² (aux); success: L1 < 0.1 in 600 steps.
    grads = [lambda t: 2 * t, lambda t: 2 * (t - 1)]
    L1 = lambda t: float((t ** 2).sum())   # noqa: E731
    gen = torch.Generator().manual_seed(0)
    starts = torch.rand(6, 2, generator=gen, dtype=torch.float64) * 4 - 2
    for theta0 in starts:
        for mode in ("unweighted", "weighted"):
            assert L1(_descend(CosineGate(mode=mode, ema=0.0), grads, theta0)) < 0.1
        # Plain mixing settles at (0.5, 0.5), where L1 = 0.5: the gate is what makes it work.
        assert L1(_descend(Sum(), grads, theta0)) > 0.4


def test_fig1_adversarial_aux_is_ignored():
    grads = [lambda t: 2 * t, lambda t: -2 * t]             # L2 = −L1
    theta0 = vec(1.5, -1.2)
    for mode in ("unweighted", "weighted"):
        gate = CosineGate(mode=mode, ema=0.0)
        theta = _descend(gate, grads, theta0)
        assert float((theta ** 2).sum()) < 0.1
        _, stats = gate.combine(torch.stack([f(theta) for f in grads]))
        assert stats["gate/aux1"] == 0.0
    # Adding it blindly cancels the main gradient: nothing moves.
    assert torch.equal(_descend(Sum(), grads, theta0, steps=10), theta0)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        CosineGate(mode="soft")
    with pytest.raises(ValueError, match="ema"):
        CosineGate(ema=1.0)
    with pytest.raises(ValueError, match="every"):
        CosineGate(every=0)
    with pytest.raises(ValueError, match="layout"):
        CosineGate().combine(torch.zeros(2, 4), layout=[("a", 0, 3)])
    gate = CosineGate()
    gate.combine(torch.ones(3, 4))
    with pytest.raises(ValueError, match="aux terms"):
        gate.combine(torch.ones(2, 4))


def test_record_fixed_names_the_terms_and_refuses_a_measuring_update():
    g = vec(2.0, 1.0)
    gate = CosineGate(ema=0.0, every=2)
    gate.combine(torch.stack([g, 0.5 * g]), names=["pg", "inverse"])
    stats = gate.record_fixed(names=["pg", "inverse"])
    assert stats == {"gate/measured": 0.0, "cos/inverse": 1.0, "gate/inverse": 1.0}
    with pytest.raises(RuntimeError, match="measures the cosine; call combine"):
        gate.record_fixed()
