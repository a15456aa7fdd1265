"""OL-AUX from forward-mode dot products: `OLAux.weights_from_dots`, `directional_derivatives`
and `apply_forward_dots` against the per-term-gradient path and a plain reference of Alg. 1."""
import math

import pytest
import torch
from torch import nn

from combiners import (OLAux, Sum, apply_combined, apply_forward_dots, directional_derivatives,
                       per_term_gradients)

D_IN, H, N_ACTIONS, N = 5, 12, 4, 16
AUX = ["aux/reward", "aux/next", "aux/l2"]      # aux/l2 has no head of its own


class TorsoHeads(nn.Module):
    """Shared MLP torso, a main (policy) head and two aux heads; aux/l2 reads the torso."""

    def __init__(self):
        super().__init__()
        self.torso = nn.Sequential(nn.Linear(D_IN, H), nn.Tanh(), nn.Linear(H, H), nn.Tanh())
        self.pi = nn.Linear(H, N_ACTIONS)
        self.reward = nn.Linear(H, 1)
        self.next = nn.Linear(H, D_IN)

    def forward(self, x):
        z = self.torso(x)
        return z, self.pi(z), self.reward(z).squeeze(-1), self.next(z)


def make_problem(seed=0):
    torch.manual_seed(seed)
    model = TorsoHeads().double()
    batch = {"x": torch.randn(N, D_IN, dtype=torch.float64),
             "a": torch.randint(0, N_ACTIONS, (N,)),
             "r": torch.randn(N, dtype=torch.float64),
             "x_next": torch.randn(N, D_IN, dtype=torch.float64)}
    return model, batch


def losses_of(outputs, batch):
    z, logits, reward, x_next = outputs
    main = nn.functional.cross_entropy(logits, batch["a"])
    aux = torch.stack([((reward - batch["r"]) ** 2).mean(),
                       ((x_next - batch["x_next"]) ** 2).mean(),
                       (z ** 2).mean()])
    return main, aux


def aux_losses_fn(model, batch):
    def fn(params):
        return losses_of(torch.func.functional_call(model, params, (batch["x"],)), batch)[1]
    return fn


SHARED = ["torso.0.weight", "torso.0.bias", "torso.2.weight", "torso.2.bias"]
HEADS = {"main": ["pi.weight", "pi.bias"], "aux/reward": ["reward.weight", "reward.bias"],
         "aux/next": ["next.weight", "next.bias"], "aux/l2": []}


def named(model, names):
    params = dict(model.named_parameters())
    return [params[n] for n in names]


def vec(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# (a) weights_from_dots against combine and against a plain loop over Alg. 1 ------------------

def reference_olaux(Gs, losses, horizon, lr, log_losses, nonnegative):
    """Alg. 1 written out: coefficients per update and w after each update."""
    K = Gs[0].shape[0]
    w, acc, coefs, ws = torch.ones(K - 1, dtype=torch.float64), 0.0, [], []
    for t, (G, L) in enumerate(zip(Gs, losses)):
        s = 1.0 / L[1:] if log_losses else torch.ones(K - 1, dtype=torch.float64)
        coefs.append(torch.cat([vec(1.0), w * s]))
        acc = acc + s * (G[1:] @ G[0])
        if (t + 1) % horizon == 0:
            w = w + lr * acc
            w = w.clamp(min=0.0) if nonnegative else w
            acc = 0.0
        ws.append(w.clone())
    return coefs, ws


@pytest.mark.parametrize("log_losses", [True, False])
@pytest.mark.parametrize("nonnegative", [True, False])
def test_weights_from_dots_steps_like_combine_and_alg_1(log_losses, nonnegative):
    torch.manual_seed(1)
    horizon, lr, updates = 3, 0.4, 8                  # spans two full horizons and part of one
    Gs, losses = [], []
    for _ in range(updates):
        main = torch.randn(6, dtype=torch.float64)
        helpful = main + 0.3 * torch.randn(6, dtype=torch.float64)
        harmful = -2.0 * main + 0.3 * torch.randn(6, dtype=torch.float64)
        Gs.append(torch.stack([main, helpful, harmful, torch.randn(6, dtype=torch.float64)]))
        losses.append(torch.cat([torch.randn(1, dtype=torch.float64),
                                 torch.rand(3, dtype=torch.float64) + 0.2]))
    coefs_ref, ws_ref = reference_olaux(Gs, losses, horizon, lr, log_losses, nonnegative)
    by_G = OLAux(horizon=horizon, lr=lr, log_losses=log_losses, nonnegative=nonnegative)
    by_dots = OLAux(horizon=horizon, lr=lr, log_losses=log_losses, nonnegative=nonnegative)
    names = ["main", "a", "b", "c"]
    for G, L, coef_ref, w_ref in zip(Gs, losses, coefs_ref, ws_ref):
        g, stats_G = by_G.combine(G, L, names=names)
        coef, stats_dots = by_dots.weights_from_dots(G[1:] @ G[0], L, names=names)
        assert coef.dtype == torch.float64 and coef.device.type == "cpu"
        torch.testing.assert_close(coef, coef_ref)
        torch.testing.assert_close(coef @ G, g)
        torch.testing.assert_close(by_dots.weights, w_ref)
        state_G, state_dots = by_G.state_dict(), by_dots.state_dict()
        assert state_G["step"] == state_dots["step"]
        torch.testing.assert_close(state_dots["weights"], state_G["weights"])
        torch.testing.assert_close(state_dots["acc"], state_G["acc"])
        gram_only = {k for k in stats_G if k.startswith(("norm/", "cos/"))}
        assert set(stats_dots) == set(stats_G) - gram_only
        for key, value in stats_dots.items():
            assert value == pytest.approx(float(stats_G[key]), rel=1e-12, abs=1e-12), key
    assert not torch.equal(by_dots.weights, torch.ones(3, dtype=torch.float64))   # w did move
    if nonnegative:
        assert float(by_dots.weights[1]) == 0.0       # the harmful term was switched off


def test_weights_from_dots_rejects_bad_input():
    ol = OLAux(log_losses=True)
    with pytest.raises(ValueError, match="1-D"):
        ol.weights_from_dots(torch.ones(2, 2), vec(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        ol.weights_from_dots(vec(1.0, 2.0), vec(1.0, 1.0))
    with pytest.raises(ValueError, match="loss values"):
        ol.weights_from_dots(vec(1.0, 2.0), None)
    assert ol.weights is None                         # a rejected call changes no state
    ol.weights_from_dots(vec(1.0, 2.0), vec(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="aux terms"):
        ol.weights_from_dots(vec(1.0), vec(1.0, 1.0))


# (b) forward-mode dots against explicit per-term gradients ---------------------------------

def test_directional_derivatives_equal_explicit_dot_products():
    model, batch = make_problem()
    params = dict(model.named_parameters())
    main, aux = losses_of(model(batch["x"]), batch)
    G_aux = per_term_gradients(aux, named(model, SHARED))
    v = torch.autograd.grad(main, named(model, SHARED))
    values, dots = directional_derivatives(aux_losses_fn(model, batch), params,
                                           dict(zip(SHARED, v)))
    torch.testing.assert_close(values, aux)
    torch.testing.assert_close(dots, G_aux @ torch.cat([t.reshape(-1) for t in v]))
    assert not dots.requires_grad

    # Any direction, on any parameters; the ones without a tangent are held fixed.
    moving = SHARED + HEADS["aux/next"]
    tangents = {n: torch.randn_like(params[n]) for n in moving}
    G_moving = per_term_gradients(losses_of(model(batch["x"]), batch)[1], named(model, moving))
    _, dots = directional_derivatives(aux_losses_fn(model, batch), params, tangents)
    torch.testing.assert_close(dots, G_moving @ torch.cat([tangents[n].reshape(-1)
                                                           for n in moving]))


def test_directional_derivatives_values_keep_their_graph():
    model, batch = make_problem()
    params = dict(model.named_parameters())
    tangents = {n: torch.randn_like(params[n]) for n in SHARED}
    values, _ = directional_derivatives(aux_losses_fn(model, batch), params, tangents)
    expected = per_term_gradients(losses_of(model(batch["x"]), batch)[1], list(params.values()))
    got = per_term_gradients(values, list(params.values()), strategy="sequential")
    torch.testing.assert_close(got, expected)


def test_directional_derivatives_rejects_bad_input():
    model, batch = make_problem()
    params = dict(model.named_parameters())
    fn = aux_losses_fn(model, batch)
    with pytest.raises(ValueError, match="unknown parameters"):
        directional_derivatives(fn, params, {"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        directional_derivatives(fn, params, {"pi.bias": torch.zeros(N_ACTIONS + 1)})
    with pytest.raises(ValueError, match="no tangents"):
        directional_derivatives(fn, params, {})
    with pytest.raises(ValueError, match="1-D"):
        directional_derivatives(lambda p: fn(p).sum(), params,
                                {"pi.bias": torch.zeros(N_ACTIONS, dtype=torch.float64)})


# (c) apply_forward_dots writes what apply_combined writes ------------------------------------

def explicit_step(combiner, model, batch):
    main, aux = losses_of(model(batch["x"]), batch)
    params = dict(model.named_parameters())
    return apply_combined(combiner, {"main": main, **dict(zip(AUX, aux))},
                          [(n, params[n]) for n in SHARED],
                          {term: [params[n] for n in ps] for term, ps in HEADS.items()})


def grads_of(model):
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("log_losses", [True, False])
def test_apply_forward_dots_writes_the_same_grads_as_apply_combined(log_losses):
    model, batch = make_problem()
    explicit = OLAux(horizon=2, lr=0.5, log_losses=log_losses, nonnegative=False)
    forward = OLAux(horizon=2, lr=0.5, log_losses=log_losses, nonnegative=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        stats_explicit = explicit_step(explicit, model, batch)
        want = grads_of(model)
        model.zero_grad(set_to_none=True)
        main, _ = losses_of(model(batch["x"]), batch)
        stats_forward = apply_forward_dots(forward, model, main, aux_losses_fn(model, batch),
                                           SHARED, HEADS)
        got = grads_of(model)
        assert all(g is not None for g in list(got.values()) + list(want.values()))
        for n in want:
            torch.testing.assert_close(got[n], want[n], msg=n)
        for key, value in stats_forward.items():
            assert value == pytest.approx(float(stats_explicit[key]), rel=1e-9), key
        torch.testing.assert_close(forward.state_dict()["weights"],
                                   explicit.state_dict()["weights"])
        optimizer.step()                              # both paths see the same new θ
    assert not torch.allclose(forward.weights, torch.ones(3, dtype=torch.float64))


def test_apply_forward_dots_names_terms_without_a_head_mapping():
    model, batch = make_problem()
    explicit, forward = OLAux(horizon=1, lr=0.5), OLAux(horizon=1, lr=0.5)
    main, aux = losses_of(model(batch["x"]), batch)
    params = dict(model.named_parameters())
    apply_combined(explicit, {"main": main, **dict(zip(AUX, aux))},
                   [(n, params[n]) for n in SHARED], {"main": named(model, HEADS["main"])})
    want = grads_of(model)
    model.zero_grad(set_to_none=True)
    main, _ = losses_of(model(batch["x"]), batch)
    stats = apply_forward_dots(forward, model, main, aux_losses_fn(model, batch), SHARED,
                               {"main": HEADS["main"]}, names=["main", *AUX])
    assert {k for k in stats if k.startswith("w/")} == {f"w/{a}" for a in AUX}
    for n in SHARED + HEADS["main"]:
        torch.testing.assert_close(params[n].grad, want[n], msg=n)
    for n in HEADS["aux/reward"] + HEADS["aux/next"]:   # not listed: no task gradient written
        assert params[n].grad is None


def test_apply_forward_dots_rejects_bad_input():
    model, batch = make_problem()
    fn = aux_losses_fn(model, batch)

    def main():
        return losses_of(model(batch["x"]), batch)[0]
    with pytest.raises(ValueError, match="OLAux"):
        apply_forward_dots(Sum(), model, main(), fn, SHARED, HEADS)
    with pytest.raises(ValueError, match="scalar"):
        apply_forward_dots(OLAux(), model, torch.ones(2), fn, SHARED, HEADS)
    with pytest.raises(ValueError, match="unknown parameter names"):
        apply_forward_dots(OLAux(), model, main(), fn, SHARED + ["torso.9.weight"], HEADS)
    with pytest.raises(ValueError, match="shared and task-specific"):
        apply_forward_dots(OLAux(), model, main(), fn, SHARED, {"main": SHARED[:1]})
    ol = OLAux()
    with pytest.raises(ValueError, match="returned 3 aux losses"):
        apply_forward_dots(ol, model, main(), fn, SHARED, {"main": [], "aux/reward": []})
    assert ol.weights is None and all(p.grad is None for p in model.parameters())


# (d) a non-finite dot product is reported and left out of w ----------------------------------

def test_nonfinite_dot_leaves_w_unchanged_and_is_reported():
    ol = OLAux(horizon=1, lr=1.0, log_losses=False, nonnegative=False)
    coef, stats = ol.weights_from_dots(vec(1.0, math.nan), None)
    assert stats["olaux/nonfinite"] == 1.0
    torch.testing.assert_close(coef, vec(1.0, 1.0, 1.0))
    torch.testing.assert_close(ol.weights, vec(1.0, 1.0))
    # Within a horizon only the bad update is left out; the good ones still count.
    ol = OLAux(horizon=3, lr=1.0, log_losses=False, nonnegative=False)
    _, stats = ol.weights_from_dots(vec(0.5, -0.25), None)
    assert stats["olaux/nonfinite"] == 0.0
    ol.weights_from_dots(vec(math.inf, 2.0), None)
    ol.weights_from_dots(vec(0.25, 0.5), None)
    torch.testing.assert_close(ol.weights, vec(1.75, 1.25))


def test_nonfinite_batch_through_apply_forward_dots_leaves_w_unchanged():
    model, batch = make_problem()
    batch["x"][0, 0] = math.nan
    ol = OLAux(horizon=1, lr=1.0, log_losses=False)
    main, _ = losses_of(model(batch["x"]), batch)
    stats = apply_forward_dots(ol, model, main, aux_losses_fn(model, batch), SHARED, HEADS)
    assert stats["olaux/nonfinite"] == 1.0
    torch.testing.assert_close(ol.weights, vec(1.0, 1.0, 1.0))


def test_weights_from_dots_names_its_stats_and_its_errors():
    ol = OLAux(horizon=1, lr=1.0, log_losses=False)
    _, stats = ol.weights_from_dots(vec(0.5, -0.25), None)    # no names: main, aux1, aux2
    assert stats == {"olaux/nonfinite": 0.0, "w/aux1": 1.0, "w/aux2": 1.0, "dot/aux1": 0.5,
                     "dot/aux2": -0.25}
    _, stats = ol.weights_from_dots(vec(0.5, -0.25), None, names=["pg", "reward", "next"])
    assert stats == {"olaux/nonfinite": 0.0, "w/reward": 1.5, "w/next": 0.75,
                     "dot/reward": 0.5, "dot/next": -0.25}
    with pytest.raises(ValueError, match="got <class 'list'>"):
        ol.weights_from_dots([0.5, -0.25], None)
    with pytest.raises(ValueError, match=r"shape \[3\] \(main, then the 2 aux terms\)"):
        ol.weights_from_dots(vec(0.5, -0.25), vec(1.0, 1.0))


def test_a_float64_direction_on_float32_parameters_and_the_messages_of_bad_input():
    """The direction takes the parameters' dtype (jvp refuses a mismatch); an empty direction
    and a loss function that returns no 1-D tensor are named as such."""

    w = torch.tensor([1.0, 2.0])
    losses = lambda p: torch.stack([(p["w"] ** 2).sum(), p["w"].sum()])  # noqa: E731
    values, dots = directional_derivatives(losses, {"w": w}, {"w": torch.tensor([1.0, 0.5], dtype=torch.float64)})
    assert dots.dtype == torch.float32 and dots.tolist() == pytest.approx([2 * 1.0 + 4 * 0.5, 1.5])
    with pytest.raises(ValueError, match="^no tangents given: the direction v is empty$"):
        directional_derivatives(losses, {"w": w}, {})
    with pytest.raises(ValueError, match=r"^fn must return a 1-D tensor of losses, got torch.Size\(\[\]\)$"):
        directional_derivatives(lambda p: p["w"].sum(), {"w": w}, {"w": torch.ones(2)})
    with pytest.raises(ValueError, match="^fn must return a 1-D tensor of losses, got <class 'tuple'>$"):
        directional_derivatives(lambda p: (p["w"].sum(),), {"w": w}, {"w": torch.ones(2)})
