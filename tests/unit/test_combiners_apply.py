"""`apply_combined`, `apply_task_split` and `apply_forward_dots`: which parameter gets which
gradient, what reaches the combiner, what happens to the graph, and the errors for bad input."""
import pytest
import torch
from torch import nn

from combiners import (Combiner, CosineGate, Layout, OLAux, PCGrad, Sum, apply_combined,
                       apply_forward_dots, apply_task_split)

K, N, D_IN, H = 3, 6, 4, 5


class Recording(Combiner):
    """Sums the rows of G; remembers what it was given. `fixed`: weights known in advance."""

    def __init__(self, fixed=None):
        self.fixed, self.calls, self.recorded = fixed, [], []

    def combine(self, G, losses=None, layout=None, names=None):
        self.calls.append({"G": G.clone(), "losses": losses, "layout": layout, "names": names})
        return G.sum(0), {"rows": float(G.shape[0])}

    def fixed_weights(self, num_terms):
        return None if self.fixed is None else torch.tensor(self.fixed, dtype=torch.float64)

    def record_fixed(self, losses=None, names=None):
        self.recorded.append({"losses": losses, "names": names})
        return {"recorded": 1.0}


class TwoHeads(nn.Module):
    """A shared trunk, one head per term, and a spare parameter that no loss reaches."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(D_IN, H)
        self.head0 = nn.Linear(H, 1)
        self.head1 = nn.Linear(H, 1)
        self.spare = nn.Parameter(torch.ones(2))


def two_head_problem():
    torch.manual_seed(0)
    model = TwoHeads().double()
    x = torch.randn(N, D_IN, dtype=torch.float64)
    y0, y1 = torch.randn(N, dtype=torch.float64), torch.randn(N, dtype=torch.float64)

    def losses():
        z = torch.tanh(model.trunk(x))
        return {"a": ((model.head0(z).squeeze(-1) - y0) ** 2).mean(),
                "b": ((model.head1(z).squeeze(-1) - y1) ** 2).mean()}
    return model, losses


def grads(params, loss):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True,
                               materialize_grads=True)


def assert_grads(params, want):
    for p, g in zip(params, want):
        torch.testing.assert_close(p.grad, g)


# apply_combined --------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [[2.0, 0.5], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
def test_known_weights_scale_the_shared_gradient_and_leave_each_head_its_own(weights):
    model, losses = two_head_problem()
    shared = list(model.trunk.parameters())
    head0 = list(model.head0.parameters()) + [model.spare]     # spare: term a never reaches it
    head1 = list(model.head1.parameters())
    ref = losses()
    want_shared = [weights[0] * ga + weights[1] * gb for ga, gb in
                   zip(grads(shared, ref["a"]), grads(shared, ref["b"]))]
    want0, want1 = grads(head0, losses()["a"]), grads(head1, losses()["b"])
    apply_combined(Sum(weights), losses(), shared, {"a": head0, "b": head1})
    assert_grads(shared, want_shared)
    assert_grads(head0, want0)                                  # unweighted, even when w_a ≠ 1
    assert_grads(head1, want1)
    assert torch.equal(model.spare.grad, torch.zeros(2, dtype=torch.float64))


def test_known_weights_skip_the_per_term_gradients():
    model, losses = two_head_problem()
    shared = list(model.trunk.parameters())
    combiner = Recording(fixed=[1.0, 3.0])
    stats = apply_combined(combiner, losses(), shared, [list(model.head0.parameters()), []])
    assert stats == {"recorded": 1.0} and combiner.calls == []
    assert combiner.recorded[0]["names"] == ["a", "b"]
    ref = losses()
    torch.testing.assert_close(combiner.recorded[0]["losses"],
                               torch.stack([ref["a"], ref["b"]]).detach())
    want = [ga + 3.0 * gb for ga, gb in zip(grads(shared, ref["a"]), grads(shared, ref["b"]))]
    assert_grads(shared, want)
    assert model.head1.weight.grad is None                      # listed for no term


def test_the_combiner_gets_the_shared_columns_the_losses_the_names_and_the_layout():
    model, losses = two_head_problem()
    named_shared = list(model.trunk.named_parameters())
    heads = {"a": list(model.head0.parameters()), "b": list(model.head1.parameters())}
    combiner = Recording()
    apply_combined(combiner, losses(), named_shared, heads)
    call = combiner.calls[0]
    assert call["names"] == ["a", "b"]
    assert call["layout"] == Layout.from_parameters(named_shared)     # grouped by module
    assert call["G"].shape == (2, D_IN * H + H)
    ref = losses()
    torch.testing.assert_close(call["losses"], torch.stack([ref["a"], ref["b"]]).detach())
    given = Layout([("w", 0, D_IN * H), ("b", D_IN * H, D_IN * H + H)])
    apply_combined(combiner, losses(), named_shared, heads, layout=given)
    assert combiner.calls[1]["layout"] == given


def test_retain_graph_keeps_the_graph_and_the_default_frees_it():
    model, losses = two_head_problem()
    shared = list(model.trunk.parameters())
    for combiner, strategy in [(Sum([2.0, 1.0]), "batched"), (PCGrad(seed=0), "sequential")]:
        ls = losses()
        apply_combined(combiner, ls, shared, [list(model.head0.parameters()), []],
                       strategy=strategy, retain_graph=True)
        (ls["a"] + ls["b"]).backward()                          # the graph is still there
    ls = losses()
    apply_combined(Sum(), ls, shared)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        (ls["a"] + ls["b"]).backward()


def test_apply_combined_rejects_bad_input_naming_the_problem():
    model, losses = two_head_problem()
    shared = list(model.trunk.parameters())
    head0 = list(model.head0.parameters())
    with pytest.raises(ValueError, match="losses must be a non-empty dict"):
        apply_combined(Sum(), {}, shared)
    with pytest.raises(ValueError, match="losses must be a non-empty dict"):
        apply_combined(Sum(), list(losses().values()), shared)
    with pytest.raises(ValueError, match="no shared parameters given"):
        apply_combined(Sum(), losses(), [])
    with pytest.raises(ValueError, match="a shared parameter is listed twice"):
        apply_combined(Sum(), losses(), shared + shared[:1])
    with pytest.raises(ValueError, match="or for two terms; task parameters must belong to "
                                         "exactly one term"):
        apply_combined(Sum(), losses(), shared, {"a": head0, "b": head0[:1]})
    with pytest.raises(ValueError, match="task_params has 1 entries for 2 terms"):
        apply_combined(Sum(), losses(), shared, [head0])
    with pytest.raises(ValueError, match="strategy must be one of"):
        apply_combined(PCGrad(), losses(), shared, strategy="magic")


# apply_task_split --------------------------------------------------------------------------------

class Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(D_IN, H)
        self.out = nn.Linear(H, 1)


SPLIT_SHARED = ["trunk.weight", "trunk.bias"]


def split_problem():
    torch.manual_seed(1)
    model = Trunk().double()
    x = torch.randn(K, N, D_IN, dtype=torch.float64)
    y = torch.randn(K, N, dtype=torch.float64)
    return model, (x, y)


def split_loss(model, x, y):
    return ((model.out(torch.tanh(model.trunk(x))).squeeze(-1) - y) ** 2).mean()


def noisy_loss(model, x, y):       # draws random numbers: needs randomness="different"/"same"
    return split_loss(model, x + 0.01 * torch.rand_like(x), y)


def list_aux_loss(model, x, y):
    return split_loss(model, x, y), [x.sum()]


def test_task_split_passes_losses_names_and_layout_to_the_combiner():
    model, batch = split_problem()
    combiner = Recording()
    names = ["p", "q", "r"]
    apply_task_split(combiner, model, split_loss, batch, SPLIT_SHARED, names=names)
    call = combiner.calls[0]
    assert call["names"] == names
    named = dict(model.named_parameters())
    assert call["layout"] == Layout.from_parameters([(n, named[n]) for n in SPLIT_SHARED])
    want = torch.stack([split_loss(model, batch[0][k], batch[1][k]) for k in range(K)])
    torch.testing.assert_close(call["losses"], want.detach())
    given = Layout([("w", 0, D_IN * H), ("b", D_IN * H, D_IN * H + H)])
    apply_task_split(combiner, model, split_loss, batch, SPLIT_SHARED, layout=given)
    assert combiner.calls[1]["layout"] == given


def test_task_split_names_reach_the_stats_of_a_held_gate():
    model, batch = split_problem()
    gate = CosineGate(ema=0.0, every=2)
    names = ["main", "aux/x", "aux/y"]
    apply_task_split(gate, model, split_loss, batch, SPLIT_SHARED, names=names)   # measures
    stats = apply_task_split(gate, model, split_loss, batch, SPLIT_SHARED, names=names)  # held
    assert stats["gate/measured"] == 0.0
    assert {"gate/aux/x", "gate/aux/y", "cos/aux/x", "cos/aux/y"} <= set(stats)


@pytest.mark.parametrize("combiner", [Sum(), Recording()], ids=["known_weights", "with_G"])
def test_task_split_passes_randomness_and_chunk_size_on(combiner):
    model, batch = split_problem()
    with pytest.raises(RuntimeError, match="randomness"):
        apply_task_split(combiner, model, noisy_loss, batch, SPLIT_SHARED)
    apply_task_split(combiner, model, noisy_loss, batch, SPLIT_SHARED, randomness="different")
    assert model.trunk.weight.grad.shape == (H, D_IN)
    if isinstance(combiner, Recording):
        with pytest.raises(ValueError, match="chunk_size"):
            apply_task_split(combiner, model, split_loss, batch, SPLIT_SHARED, chunk_size=0)


def test_task_split_rejects_bad_input_naming_the_problem():
    model, batch = split_problem()
    with pytest.raises(ValueError, match="2 names for 3 tasks"):
        apply_task_split(Sum(), model, split_loss, batch, SPLIT_SHARED, names=["a", "b"])
    with pytest.raises(ValueError, match=r"unknown parameter names \['trunk.w'\]"):
        apply_task_split(Sum(), model, split_loss, batch, ["trunk.w"])
    with pytest.raises(ValueError, match=r"dict of tensors\); got aux of type list"):
        apply_task_split(Sum(), model, list_aux_loss, batch, SPLIT_SHARED, has_aux=True)


# apply_forward_dots --------------------------------------------------------------------------

class MainAux(nn.Module):
    """Shared trunk; a main head; two aux heads; `spare` reached by no loss."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(D_IN, H)
        self.pi = nn.Linear(H, 1)
        self.r = nn.Linear(H, 1)
        self.s = nn.Linear(H, 1)
        self.spare = nn.Parameter(torch.ones(3))


FWD_SHARED = ["trunk.weight", "trunk.bias"]


def forward_problem():
    torch.manual_seed(2)
    model = MainAux().double()
    x = torch.randn(N, D_IN, dtype=torch.float64)
    y = torch.randn(3, N, dtype=torch.float64)

    def outputs(params):
        z = torch.tanh(torch.func.functional_call(model.trunk, {
            "weight": params["trunk.weight"], "bias": params["trunk.bias"]}, (x,)))
        return [torch.func.functional_call(getattr(model, h), {
            "weight": params[f"{h}.weight"], "bias": params[f"{h}.bias"]}, (z,)).squeeze(-1)
            for h in ("pi", "r", "s")]

    def all_losses(params):
        return torch.stack([((o - y[i]) ** 2).mean() for i, o in enumerate(outputs(params))])

    def main_loss():
        return all_losses(dict(model.named_parameters()))[0]

    return model, main_loss, lambda params: all_losses(params)[1:]


def explicit_grads(model, main_loss, aux_fn, ol, heads):
    """What apply_combined writes for the same OLAux step (heads given as lists by index)."""
    named = dict(model.named_parameters())
    aux = aux_fn(named)
    apply_combined(ol, {"main": main_loss(), "aux1": aux[0], "aux2": aux[1]},
                   [(n, named[n]) for n in FWD_SHARED],
                   [[named[n] for n in ps] for ps in heads])
    out = {n: None if p.grad is None else p.grad.clone() for n, p in named.items()}
    for p in named.values():
        p.grad = None
    return out


@pytest.mark.parametrize("heads", [
    [["pi.weight", "pi.bias", "spare"], ["r.weight", "r.bias"], ["s.weight", "s.bias"]],
    None], ids=["heads_by_index", "no_heads"])
def test_forward_dots_names_terms_main_aux_and_writes_each_head_its_own_gradient(heads):
    model, main_loss, aux_fn = forward_problem()
    want = explicit_grads(model, main_loss, aux_fn, OLAux(horizon=1, lr=0.5),
                          heads if heads is not None else [[], [], []])
    stats = apply_forward_dots(OLAux(horizon=1, lr=0.5), model, main_loss(), aux_fn,
                               FWD_SHARED, heads)
    assert {k for k in stats if k.startswith("w/")} == {"w/aux1", "w/aux2"}
    for n, p in model.named_parameters():
        if want[n] is None:
            assert p.grad is None, n
        else:
            torch.testing.assert_close(p.grad, want[n], msg=n)
    if heads is not None:       # the main head's spare parameter: the main term's zero gradient
        assert torch.equal(model.spare.grad, torch.zeros(3, dtype=torch.float64))


def test_forward_dots_errors_name_what_was_given():
    model, main_loss, aux_fn = forward_problem()
    with pytest.raises(ValueError, match="got Sum"):
        apply_forward_dots(Sum(), model, main_loss(), aux_fn, FWD_SHARED)
    with pytest.raises(ValueError, match=r"scalar tensor, got torch.Size\(\[2\]\)"):
        apply_forward_dots(OLAux(), model, torch.ones(2), aux_fn, FWD_SHARED)
    with pytest.raises(ValueError, match="scalar tensor, got <class 'float'>"):
        apply_forward_dots(OLAux(), model, 1.0, aux_fn, FWD_SHARED)
