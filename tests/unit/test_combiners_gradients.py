"""Per-term gradient strategies, `.grad` plumbing, and the Sum baseline against one backward."""
import os
import warnings

import pytest
import torch
from torch import nn

import combiners.gradients as gradients
from combiners import (CosineGate, PCGrad, Sum, apply_combined, apply_task_split, flatten,
                       per_term_gradients, read_grads, task_split_gradients, task_split_losses,
                       unflatten, write_grads)
from combiners.gradients import check_task_batches

K, N, D_IN, H = 3, 8, 5, 16


class MultiHead(nn.Module):
    """Shared MLP trunk, one linear head per task; the task picks its head by one-hot."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(D_IN, H), nn.Tanh(), nn.Linear(H, H), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(K))

    def forward(self, x, onehot):
        z = self.trunk(x)
        out = torch.stack([h(z).squeeze(-1) for h in self.heads])   # [K, n]
        return (onehot[:, None] * out).sum(0)


def task_loss(model, x, y, onehot):
    return ((model(x, onehot) - y) ** 2).mean()


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = MultiHead().double()
    x = torch.randn(K, N, D_IN, dtype=torch.float64)
    y = torch.randn(K, N, dtype=torch.float64)
    onehot = torch.eye(K, dtype=torch.float64)
    shared = [n for n, _ in model.named_parameters() if n.startswith("trunk.")]
    heads = [[f"heads.{k}.weight", f"heads.{k}.bias"] for k in range(K)]
    return model, (x, y, onehot), shared, heads


def named_losses(model, batch):
    x, y, onehot = batch
    return {f"task{k}": task_loss(model, x[k], y[k], onehot[k]) for k in range(K)}


def params_of(model, names):
    named = dict(model.named_parameters())
    return [named[n] for n in names]


def test_three_strategies_agree(setup):
    model, batch, shared, heads = setup
    names = shared + [n for hs in heads for n in hs]
    params = params_of(model, names)
    G_seq = per_term_gradients(named_losses(model, batch), params, strategy="sequential")
    G_bat = per_term_gradients(named_losses(model, batch), params, strategy="batched")
    G_split, losses = task_split_gradients(model, task_loss, batch, names)
    torch.testing.assert_close(G_bat, G_seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(G_split, G_seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses, torch.stack(list(named_losses(model, batch).values())))
    # Head k is reached only by task k; the other rows are zero there.
    P = sum(p.numel() for p in params_of(model, shared))
    for k in range(K):
        cols = slice(P + k * (H + 1), P + (k + 1) * (H + 1))
        assert G_seq[k, cols].abs().sum() > 0
        assert torch.equal(G_seq[[j for j in range(K) if j != k]][:, cols],
                           torch.zeros(K - 1, H + 1, dtype=torch.float64))


@pytest.mark.parametrize("make", [lambda: PCGrad(seed=4), lambda: CosineGate(ema=0.0)])
def test_apply_paths_write_the_same_grads(setup, make):
    model, batch, shared, heads = setup
    written = []
    for path in ("sequential", "batched", "task_split"):
        model.zero_grad(set_to_none=True)
        if path == "task_split":
            apply_task_split(make(), model, task_loss, batch, shared, heads)
        else:
            apply_combined(make(), named_losses(model, batch), params_of(model, shared),
                           {f"task{k}": params_of(model, heads[k]) for k in range(K)},
                           strategy=path)
        written.append(read_grads(list(model.parameters())))
    torch.testing.assert_close(written[1], written[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(written[2], written[0], rtol=1e-5, atol=1e-5)
    # Heads received their own task's gradient, untouched.
    for k in range(K):
        own = torch.autograd.grad(named_losses(model, batch)[f"task{k}"],
                                  params_of(model, heads[k]))
        for p, g in zip(params_of(model, heads[k]), own):
            torch.testing.assert_close(p.grad, g)


def test_sum_equals_one_backward_of_the_summed_loss(setup):
    model, batch, shared, heads = setup
    params = list(model.parameters())
    sum(named_losses(model, batch).values()).backward()
    reference = read_grads(params)
    for strategy in ("sequential", "batched"):
        G = per_term_gradients(named_losses(model, batch), params, strategy=strategy)
        g, stats = Sum().combine(G)
        torch.testing.assert_close(g, reference, rtol=1e-6, atol=1e-6)
        assert stats["norm/combined"] == pytest.approx(float(reference.norm()))
    model.zero_grad(set_to_none=True)
    apply_combined(Sum(), named_losses(model, batch), params)   # one backward, no G built
    torch.testing.assert_close(read_grads(params), reference, rtol=1e-6, atol=1e-6)
    model.zero_grad(set_to_none=True)
    apply_task_split(Sum(), model, task_loss, batch, shared, heads)   # vmapped forward, same
    torch.testing.assert_close(read_grads(params), reference, rtol=1e-6, atol=1e-6)
    g, _ = Sum([2.0, 0.0, -1.0]).combine(G)
    torch.testing.assert_close(g, 2 * G[0] - G[2])


def test_held_gate_runs_one_backward_and_heads_keep_their_own_gradient(setup):
    model, batch, shared, heads = setup
    gate = CosineGate(ema=0.0, every=2)
    task_params = {f"task{k}": params_of(model, heads[k]) for k in range(K)}
    shared_p = params_of(model, shared)
    apply_combined(gate, named_losses(model, batch), shared_p, task_params)   # measures
    w = gate.fixed_weights(K)
    assert w is not None
    losses = named_losses(model, batch)
    G = per_term_gradients(losses, shared_p, strategy="sequential", retain_graph=True)
    stats = apply_combined(gate, losses, shared_p, task_params)   # held: no G inside
    assert stats["gate/measured"] == 0.0
    torch.testing.assert_close(read_grads(shared_p), w @ G)
    for k in range(K):
        own = torch.autograd.grad(named_losses(model, batch)[f"task{k}"], task_params[f"task{k}"])
        for p, g in zip(task_params[f"task{k}"], own):
            torch.testing.assert_close(p.grad, g)


class _NoVmap(torch.autograd.Function):
    """An op whose backward autograd cannot batch (no vmap rule)."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return torch.from_numpy(grad.numpy() * 2)   # leaves torch: vmap cannot see through


@pytest.mark.parametrize("unused_shape", [(4,), (3,)])
def test_batched_gives_zero_columns_for_a_parameter_no_term_reaches(unused_shape):
    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    unused = torch.randn(unused_shape, dtype=torch.float64, requires_grad=True)
    losses = [a.sum(), (a ** 2).sum()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # no fallback to "sequential"
        G = per_term_gradients(losses, [a, unused], strategy="batched")
    torch.testing.assert_close(G, per_term_gradients(losses, [a, unused], strategy="sequential"))
    assert G.shape == (2, 3 + unused.numel())


def test_batched_falls_back_to_sequential_with_a_warning(monkeypatch):
    monkeypatch.setattr(gradients, "_warned_fallback", False)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    losses = [(_NoVmap.apply(w) * c).sum() for c in (1.0, -2.0)]
    with pytest.warns(RuntimeWarning, match="falling back"):
        G = per_term_gradients(losses, [w], strategy="batched")
    torch.testing.assert_close(G, torch.tensor([[2.0] * 4, [-4.0] * 4], dtype=torch.float64))


def test_flatten_unflatten_and_grad_round_trip():
    params = [torch.randn(2, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    flat = torch.arange(10.0)
    parts = unflatten(flat, params)
    assert [tuple(p.shape) for p in parts] == [(2, 3), (4,)]
    assert torch.equal(flatten(parts), flat)
    assert torch.equal(flatten([None, parts[1]], like=params)[:6], torch.zeros(6))
    write_grads(params, flat)
    assert torch.equal(params[1].grad, torch.tensor([6.0, 7.0, 8.0, 9.0]))
    assert torch.equal(read_grads(params), flat)
    with pytest.raises(ValueError):
        unflatten(torch.zeros(9), params)


def test_rejects_bad_inputs(setup):
    model, batch, shared, heads = setup
    shared_p = params_of(model, shared)
    with pytest.raises(ValueError, match="strategy"):
        per_term_gradients(named_losses(model, batch), shared_p, strategy="magic")
    with pytest.raises(ValueError, match="shared and task-specific"):
        apply_combined(Sum(), named_losses(model, batch), shared_p, {"task0": shared_p[:1]})
    with pytest.raises(ValueError, match="unknown loss terms"):
        apply_combined(Sum(), named_losses(model, batch), shared_p, {"nope": []})
    with pytest.raises(ValueError, match="scalar"):
        per_term_gradients([torch.ones(2, requires_grad=True)], shared_p)
    with pytest.raises(ValueError, match="unknown parameter"):
        task_split_gradients(model, task_loss, batch, ["trunk.9.weight"])


def test_sum_weights_keep_float64_precision_and_must_match_the_terms():
    G = torch.tensor([[1.0, 3.0], [2.0, -1.0], [0.5, 4.0]], dtype=torch.float64)
    weights = [0.1, 1 / 3, 2.0]     # not exact in float32 (relative error about 1e-8)
    g, _ = Sum(weights).combine(G)
    torch.testing.assert_close(g, 0.1 * G[0] + (1 / 3) * G[1] + 2.0 * G[2], rtol=1e-13, atol=0)
    assert Sum(weights).fixed_weights(3) == (0.1, 1 / 3, 2.0)     # host constants, as given
    with pytest.raises(ValueError, match="3 weights for 2 loss terms"):
        Sum(weights).combine(G[:2])


def test_read_grads_gives_zeros_for_a_parameter_without_grad():
    params = [torch.randn(2, requires_grad=True), torch.randn(3, requires_grad=True)]
    params[1].grad = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(read_grads(params), torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0]))


def test_bad_inputs_are_named_in_the_error():
    p = torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match="flatten got None without `like` to take its shape"):
        flatten([None, torch.zeros(1)])
    with pytest.raises(ValueError, match="no loss terms given"):
        per_term_gradients([], [p])
    with pytest.raises(ValueError, match="no parameters given"):
        per_term_gradients([p.sum()], [])
    with pytest.raises(ValueError, match="task_batches is empty"):
        check_task_batches(())
    with pytest.raises(ValueError, match=r"same size; got \[\(3, 2\), \(2, 2\)\]"):
        check_task_batches((torch.zeros(3, 2), torch.zeros(2, 2)))


@pytest.mark.parametrize("strategy, K", [("sequential", 2), ("sequential", 1), ("batched", 1)])
def test_per_term_gradients_frees_the_graph_unless_asked_to_keep_it(strategy, K):
    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    losses = [(a ** (k + 1)).sum() for k in range(K)]
    per_term_gradients(losses, [a], strategy=strategy, retain_graph=True)
    sum(losses).backward(retain_graph=True)                  # still there
    per_term_gradients(losses, [a], strategy=strategy)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        sum(losses).backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_runs_batched_on_a_graph_that_vmap_supports(monkeypatch, dtype):
    monkeypatch.setattr(gradients, "_warned_fallback", False)
    a = torch.randn(3, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # a fallback would warn
        G = per_term_gradients([a.sum(), (a ** 2).sum()], [a], strategy="batched")
    torch.testing.assert_close(G, torch.stack([torch.ones_like(a), 2 * a.detach()]))


def test_the_fallback_warns_once_at_the_callers_line_and_sequential_never_tries_batched(
        monkeypatch):
    monkeypatch.setattr(gradients, "_warned_fallback", False)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def losses():
        return [(_NoVmap.apply(w) * c).sum() for c in (1.0, -2.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_term_gradients(losses(), [w], strategy="sequential")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_term_gradients(losses(), [w], strategy="batched")
        per_term_gradients(losses(), [w], strategy="batched")
    assert len(caught) == 1
    assert not caught[0].filename.endswith(os.path.join("combiners", "gradients.py"))  # caller's
    message = str(caught[0].message)
    assert message.startswith("batched per-term gradients are not supported by this graph (")
    assert "Batching rule not implemented" in message     # the first line of vmap's error


def test_a_single_task_tensor_is_a_batch_of_one_input():
    torch.manual_seed(0)
    lin = nn.Linear(D_IN, 1).double()
    x = torch.randn(K, N, D_IN, dtype=torch.float64)

    def loss(model, xk):
        return (model(xk) ** 2).mean()
    assert check_task_batches(x)[1] == K
    G, losses = task_split_gradients(lin, loss, x, ["weight", "bias"])
    want = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        loss(lin, x[k]), [lin.weight, lin.bias])]) for k in range(K)])
    torch.testing.assert_close(G, want)
    torch.testing.assert_close(task_split_losses(lin, loss, x), losses)


def test_task_split_losses_passes_randomness_on():
    lin = nn.Linear(D_IN, 1).double()
    x = torch.randn(K, N, D_IN, dtype=torch.float64)

    def noisy(model, xk):
        return (model(xk + torch.rand_like(xk)) ** 2).mean()
    with pytest.raises(RuntimeError, match="randomness"):
        task_split_losses(lin, noisy, x)
    assert task_split_losses(lin, noisy, x, randomness="different").shape == (K,)
