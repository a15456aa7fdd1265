"""CosineGate (paper 000) with more than one auxiliary term: each aux row gets its own cosine,
gate and norm; the stats it reports; what a non-finite measurement leaves behind; its errors."""
import math

import pytest
import torch

from combiners import CosineGate, Layout


def vec(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def cos(a, b):
    return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))


# Two layers: "a" = columns 0-1, "b" = columns 2-3.
MAIN = vec(1.0, 0.0, 2.0, 0.0)
AUX1 = vec(1.0, 1.0, 0.0, 3.0)     # layer a: cos 1/sqrt 2, layer b: cos 0   -> mean > 0
AUX2 = vec(-1.0, 0.0, 1.0, 1.0)    # layer a: cos -1,       layer b: 1/sqrt 2 -> mean < 0
LAYOUT = Layout([("a", 0, 2), ("b", 2, 4)])
NAMES = ["pg", "inverse", "reward"]


def test_each_aux_term_gets_its_own_per_layer_cosine_gate_and_norm():
    G = torch.stack([MAIN, AUX1, AUX2])
    out, stats = CosineGate(ema=0.0).combine(G, layout=LAYOUT, names=NAMES)
    c1 = (cos(MAIN[:2], AUX1[:2]) + cos(MAIN[2:], AUX1[2:])) / 2
    c2 = (cos(MAIN[:2], AUX2[:2]) + cos(MAIN[2:], AUX2[2:])) / 2
    assert c1 > 0 > c2
    assert stats == pytest.approx({
        "gate/measured": 1.0, "gate/nonfinite": 0.0,
        "cos_now/inverse": c1, "cos_now/reward": c2, "cos/inverse": c1, "cos/reward": c2,
        "cos_now/inverse/a": 1 / math.sqrt(2), "cos_now/inverse/b": 0.0,
        "cos_now/reward/a": -1.0, "cos_now/reward/b": 1 / math.sqrt(2),
        "gate/inverse": 1.0, "gate/reward": 0.0,
        "norm/pg": math.sqrt(5), "norm/inverse": math.sqrt(11), "norm/reward": math.sqrt(3),
        "norm/combined": float((MAIN + AUX1).norm()),
    })
    torch.testing.assert_close(out, MAIN + AUX1)


def test_each_aux_term_gets_its_own_global_cosine_and_weight():
    G = torch.stack([MAIN, AUX1, AUX2])
    out, stats = CosineGate(mode="weighted", ema=0.0, per_layer=False).combine(G, layout=LAYOUT)
    c1, c2 = cos(MAIN, AUX1), cos(MAIN, AUX2)
    assert c1 != pytest.approx(c2)
    assert stats == pytest.approx({
        "gate/measured": 1.0, "gate/nonfinite": 0.0, "cos_now/aux1": c1, "cos_now/aux2": c2,
        "cos/aux1": c1,
        "cos/aux2": c2, "gate/aux1": c1, "gate/aux2": c2,
        "norm/main": math.sqrt(5), "norm/aux1": math.sqrt(11), "norm/aux2": math.sqrt(3),
        "norm/combined": float((MAIN + c1 * AUX1 + c2 * AUX2).norm()),
    })
    torch.testing.assert_close(out, MAIN + c1 * AUX1 + c2 * AUX2)


def test_a_single_layer_reports_no_per_layer_cosines():
    G = torch.stack([MAIN, AUX1])
    _, stats = CosineGate(ema=0.0).combine(G)
    assert not [key for key in stats if key.count("/") > 1]
    assert stats["cos_now/aux1"] == pytest.approx(cos(MAIN, AUX1))


def test_weighted_gate_below_zero_stays_zero_even_under_a_negative_threshold():
    main, aux = vec(1.0, 0.0), vec(-0.6, 0.8)        # cos = -0.6
    out, stats = CosineGate(mode="weighted", ema=0.0, threshold=-0.9).combine(
        torch.stack([main, aux]))
    assert stats["gate/aux1"] == 0.0 and stats["cos/aux1"] == pytest.approx(-0.6)
    torch.testing.assert_close(out, main)


def test_a_nonfinite_first_measurement_counts_nothing_and_holds_every_aux_off():
    G = torch.stack([MAIN, AUX1, AUX2])
    bad = G.clone()
    bad[2, 3] = float("inf")
    gate = CosineGate(ema=0.5)
    _, stats = gate.combine(bad)
    assert stats["gate/nonfinite"] == 1.0
    assert stats["gate/aux1"] == 0.0 and stats["gate/aux2"] == 0.0
    assert math.isnan(stats["cos/aux1"]) and math.isnan(stats["cos/aux2"])
    assert gate.state_dict()["n"] == 0 and not gate.state_dict()["c"].any()
    # The next finite measurement is the first one: it sets the average exactly.
    _, stats = gate.combine(G, layout=LAYOUT)
    assert stats["gate/nonfinite"] == 0.0
    assert stats["cos/aux1"] == pytest.approx(stats["cos_now/aux1"])
    assert stats["gate/aux1"] == 1.0 and stats["gate/aux2"] == 0.0


def test_the_number_of_aux_terms_is_fixed_after_the_first_update():
    gate = CosineGate(every=2)
    gate.combine(torch.ones(3, 4))
    with pytest.raises(ValueError, match="fed 2 aux terms before, now 1"):
        gate.combine(torch.ones(2, 4))
    with pytest.raises(ValueError, match="fed 2 aux terms before, now 3"):
        gate.fixed_weights(4)
    assert gate.fixed_weights(3).tolist() == [1.0, 1.0, 1.0]


def test_errors_name_the_argument_and_its_value():
    with pytest.raises(ValueError, match=r"^mode must be 'unweighted' or 'weighted', got 'soft'$"):
        CosineGate(mode="soft")
    with pytest.raises(ValueError, match=r"^ema must be in \[0, 1\), got -0.1$"):
        CosineGate(ema=-0.1)
    with pytest.raises(ValueError, match=r"^every must be a positive integer, got 1.5$"):
        CosineGate(every=1.5)


def test_repr_names_every_setting():
    gate = CosineGate(mode="weighted", per_layer=False, ema=0.5, threshold=0.01, every=4)
    assert repr(gate) == ("CosineGate(mode='weighted', per_layer=False, ema=0.5, "
                          "threshold=0.01, every=4)")


def test_record_fixed_on_a_measuring_update_says_to_call_combine_with_g():
    gate = CosineGate(every=2)
    with pytest.raises(RuntimeError,
                       match=r"^this update measures the cosine; call combine\(\) with G$"):
        gate.record_fixed()


def test_a_layer_the_aux_term_does_not_reach_is_left_out_of_its_mean():
    main = vec(1.0, 2.0, 3.0, 4.0)
    aux = vec(1.0, 2.0, 0.0, 0.0)       # aux does not reach layer "b"
    _, stats = CosineGate(ema=0.0).combine(torch.stack([main, aux]), layout=LAYOUT)
    assert stats["cos_now/aux1/b"] == 0.0
    assert stats["cos/aux1"] == pytest.approx(1.0)


def test_a_cosine_exactly_at_the_threshold_opens_the_gate():
    main, aux = vec(1.0, 0.0), vec(0.0, 2.0)          # cos = 0 = the default threshold
    out, stats = CosineGate(ema=0.0).combine(torch.stack([main, aux]))
    assert stats["cos/aux1"] == 0.0 and stats["gate/aux1"] == 1.0
    torch.testing.assert_close(out, main + aux)


def test_losses_of_another_length_than_g_are_refused():
    with pytest.raises(ValueError, match=r"losses must have shape \[2\]"):
        CosineGate().combine(torch.ones(2, 4), losses=torch.ones(3))
