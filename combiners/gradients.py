"""Per-term gradients on the shared parameters, and moving them to and from `.grad`.

The combiners need G[K, P]: one row per loss term. Three ways to get it:

- `"sequential"`: K `torch.autograd.grad` calls with `retain_graph`; works for any graph, costs
  K backward passes.
- `"batched"`: one `torch.autograd.grad(..., is_grads_batched=True)` on the stacked losses with
  the identity as grad_outputs. Autograd vmaps the backward, so the shared torso is traversed
  once with K stacked output gradients (same arithmetic, far fewer kernel launches and
  Python overhead). Backward ops that vmap cannot run (e.g. a custom autograd.Function
  without vmap support) raise; we then warn once and fall back to `"sequential"`. For that
  the batched attempt keeps the graph (it is freed when the caller drops its losses).
- task-split (`task_split_gradients`): when task k's loss depends only on its own slice of the
  batch, `torch.func.vmap` over the task axis of `grad(per-task loss)` gives all K gradients for
  about the cost of one backward of the whole batch (each weight gradient becomes one batched
  matmul over tasks), following the per-sample-gradient recipe of `torch.func`.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

STRATEGIES = ("sequential", "batched")
_warned_fallback = False


def flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor] | None = None
            ) -> torch.Tensor:
    """Concatenate tensors into one flat vector; a None entry is zeros shaped like `like[i]`."""
    parts = []
    for i, t in enumerate(tensors):
        if t is None:
            if like is None:
                raise ValueError("flatten got None without `like` to take its shape from")
            t = torch.zeros_like(like[i])
        parts.append(t.reshape(-1))
    return torch.cat(parts)


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of `flat` shaped like each tensor of `like`, in order (no copy)."""
    total = sum(p.numel() for p in like)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"flat vector of {tuple(flat.shape)} does not match {total} elements")
    out, offset = [], 0
    for p in like:
        out.append(flat[offset:offset + p.numel()].view(p.shape))
        offset += p.numel()
    return out


def write_grads(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Set each parameter's `.grad` to its slice of `flat` (replacing what was there)."""
    for p, g in zip(params, unflatten(flat, params)):
        p.grad = g.detach().to(dtype=p.dtype)


def read_grads(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parameters' `.grad` as one flat vector (zeros where `.grad` is None)."""
    return flatten([p.grad for p in params], like=params)


def _stack_losses(losses) -> torch.Tensor:
    if isinstance(losses, Mapping):
        losses = list(losses.values())
    if isinstance(losses, torch.Tensor):
        return losses.reshape(-1)      # already stacked: [K] (or one scalar term)
    if not losses:
        raise ValueError("no loss terms given")
    for i, l in enumerate(losses):
        if l.numel() != 1:
            raise ValueError(f"loss term {i} must be a scalar, got shape {tuple(l.shape)}")
    return torch.stack([l.reshape(()) for l in losses])


def per_term_gradients(losses: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                       params: Sequence[torch.Tensor], strategy: str = "batched",
                       retain_graph: bool = False) -> torch.Tensor:
    """G[K, P]: row k is the gradient of loss term k w.r.t. `params`, flattened in order.

    `losses` are scalar tensors (a dict keeps its order); `params` are given explicitly, and
    a term that does not reach a parameter contributes zeros there.
    """
    global _warned_fallback
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    params = list(params)
    if not params:
        raise ValueError("no parameters given")
    L = _stack_losses(losses)
    K = L.shape[0]
    if strategy == "batched" and K > 1:
        try:
            # retain_graph so that a failure part-way leaves the graph intact for the fallback.
            grads = torch.autograd.grad(
                L, params, grad_outputs=torch.eye(K, dtype=L.dtype, device=L.device),
                is_grads_batched=True, retain_graph=True, allow_unused=True,
                materialize_grads=True)
            # A parameter no term reaches comes back as unbatched zeros shaped like itself.
            return torch.cat([g.reshape(K, -1) if g.dim() > p.dim() else
                              g.reshape(1, -1).expand(K, -1) for g, p in zip(grads, params)],
                             dim=1)
        except RuntimeError as err:
            if not _warned_fallback:
                warnings.warn("batched per-term gradients are not supported by this graph "
                              f"({str(err).splitlines()[0]}); falling back to 'sequential'",
                              RuntimeWarning, stacklevel=2)
                _warned_fallback = True
    rows = []
    for k in range(K):
        grads = torch.autograd.grad(L[k], params, retain_graph=retain_graph or k < K - 1,
                                    allow_unused=True, materialize_grads=True)
        rows.append(flatten(grads))
    return torch.stack(rows)


class _LossModule(nn.Module):
    """Wraps `loss_fn(model, *batch)` so `functional_call` can swap the model's parameters
    for the whole loss computation, not just one `forward` call."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch):
        return self.loss_fn(self.model, *batch)


def check_task_batches(task_batches) -> tuple[tuple[torch.Tensor, ...], int]:
    """The batch as a tuple of tensors and K, the size of their common leading task axis."""
    batch = (task_batches,) if isinstance(task_batches, torch.Tensor) else tuple(task_batches)
    if not batch:
        raise ValueError("task_batches is empty")
    K = batch[0].shape[0]
    for t in batch:
        if t.shape[0] != K:
            raise ValueError(f"every task batch needs the task axis first with the same size; "
                             f"got {[tuple(b.shape) for b in batch]}")
    return batch, K


def task_split_losses(model: nn.Module, loss_fn: Callable[..., torch.Tensor], task_batches,
                      randomness: str = "error", has_aux: bool = False):
    """Per-task losses [K] of task-split batches, differentiable w.r.t. the model as usual.

    `task_batches` is a tensor or tuple of tensors with the task axis first: `[K, n, ...]`;
    `loss_fn(model, *batch_k)` returns task k's scalar loss from its own slice. With `has_aux`
    it returns `(loss, aux)` and so does this function, aux stacked over tasks.
    """
    batch, _ = check_task_batches(task_batches)
    wrapper = _LossModule(model, loss_fn)
    params = {f"model.{n}": p for n, p in model.named_parameters()}
    fn = lambda *b: torch.func.functional_call(wrapper, params, b)  # noqa: E731
    return torch.func.vmap(fn, randomness=randomness)(*batch)


def task_split_gradients(model: nn.Module, loss_fn: Callable[..., torch.Tensor], task_batches,
                         params: Sequence[str], randomness: str = "error",
                         chunk_size: int | None = None, has_aux: bool = False):
    """G[K, P] over the named parameters `params` (in order) and the losses [K], for losses
    where task k depends only on its own slice of `task_batches` (task axis first).

    `vmap` over the task axis of `grad(loss_fn)`: one batched pass instead of K backward
    passes. Parameters not named are held fixed (no graph is built for them). With `has_aux`,
    `loss_fn` returns `(loss, aux)` and the result is `(G, losses, aux)`, aux stacked over tasks.
    """
    batch, K = check_task_batches(task_batches)
    named = dict(model.named_parameters())
    missing = [n for n in params if n not in named]
    if missing:
        raise ValueError(f"unknown parameter names {missing}")
    wrapper = _LossModule(model, loss_fn)
    fixed = {f"model.{n}": p.detach() for n, p in named.items()}
    varying = {n: named[n].detach() for n in params}

    def task_loss(theta: dict[str, torch.Tensor], *batch_k):
        full = dict(fixed)
        full.update({f"model.{n}": t for n, t in theta.items()})
        return torch.func.functional_call(wrapper, full, batch_k)

    grad_fn = torch.func.grad_and_value(task_loss, has_aux=has_aux)
    grads, value = torch.func.vmap(grad_fn, in_dims=(None,) + (0,) * len(batch),
                                   randomness=randomness, chunk_size=chunk_size)(varying, *batch)
    G = torch.cat([grads[n].reshape(K, -1) for n in params], dim=1)
    if has_aux:
        losses, aux = value
        return G, losses.detach(), aux
    return G, value.detach()
