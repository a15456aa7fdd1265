"""One call from named loss terms to `.grad`: per-term gradients -> combiner -> parameters.

    stats = apply_combined(combiner, {"main": l_main, "aux/inverse": l_inv},
                           shared=list(model.torso.named_parameters()),
                           task_params={"main": list(model.pi.parameters()),
                                        "aux/inverse": list(model.inv_head.parameters())})
    clip_grad_norm_(...); optimizer.step()

Shared parameters (reached by several terms) get the combined gradient; task-specific
parameters (heads that only one term uses) get that term's own gradient, untouched, as in
Prop. 2 / Alg. 1 of paper 000 and Alg. 1 of paper 003. Both sets are given explicitly, never
guessed from `grad is None`. `.grad` is overwritten, as after `zero_grad(); backward()`.

When the combiner already knows its weights (`Sum`, `CosineGate` between measurements), no
per-term gradients are built: one backward of Σ_k w_k L_k gives the shared gradient.
`apply_forward_dots` does the same for OL-AUX, whose weight step needs only the dot products
∇L_main · ∇L_aux,i: one forward-mode pass gives them all (see `combiners.forward_dots`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from combiners.base import Combiner, Stats, term_names
from combiners.forward_dots import directional_derivatives
from combiners.gradients import (check_task_batches, per_term_gradients, task_split_gradients,
                                 task_split_losses, write_grads)
from combiners.layout import Layout


def _split_named(shared) -> tuple[list[torch.Tensor], Layout]:
    """Accept tensors or (name, tensor) pairs; the layout groups named ones by module."""
    items = list(shared)
    if not items:
        raise ValueError("no shared parameters given")
    params = [it[1] if isinstance(it, tuple) else it for it in items]
    return params, Layout.from_parameters(items)


def _task_lists(task_params, names: Sequence[str]) -> list[list[torch.Tensor]]:
    """Task-specific parameters per term, in term order (empty list: the term has none)."""
    if task_params is None:
        return [[] for _ in names]
    if isinstance(task_params, Mapping):
        unknown = set(task_params) - set(names)
        if unknown:
            raise ValueError(f"task_params names unknown loss terms {sorted(unknown)}; "
                             f"terms are {list(names)}")
        return [list(task_params.get(n, [])) for n in names]
    lists = [list(ps) for ps in task_params]
    if len(lists) != len(names):
        raise ValueError(f"task_params has {len(lists)} entries for {len(names)} terms")
    return lists


def _check_disjoint(shared: Sequence[torch.Tensor], heads: Sequence[Sequence[torch.Tensor]]):
    seen = {id(p) for p in shared}
    if len(seen) != len(shared):
        raise ValueError("a shared parameter is listed twice")
    for ps in heads:
        for p in ps:
            if id(p) in seen:
                raise ValueError("a parameter is listed as shared and task-specific, or for two "
                                 "terms; task parameters must belong to exactly one term")
            seen.add(id(p))


def _apply_fixed(combiner: Combiner, w, names, L: torch.Tensor,
                 shared, heads, retain_graph: bool) -> Stats:
    """Shared: one backward of Σ_k w_k L_k. Heads: their own term's gradient, exactly."""
    _write_weighted(w, L, shared, heads, retain_graph)
    return combiner.record_fixed(L.detach(), names)


def _write_weighted(w, L: torch.Tensor, shared, heads, retain_graph: bool) -> None:
    """`.grad` of shared = ∇ Σ_k w_k L_k (one backward); of term k's heads = ∇ L_k.

    `w` is a tuple of host constants (config weights: the graph can be pruned by value) or a
    tensor on the device (combiner state: never read back, so nothing branches on it).
    """
    inputs = list(shared)
    if isinstance(w, torch.Tensor):
        # ∇φ_k (w_k L_k) = w_k ∇φ_k L_k is not the head's own gradient, and w is not known on
        # the host: the shared parameters take Σ_k w_k L_k, the heads Σ_k L_k (a head is
        # reached by its own term only), in two calls; autograd walks only what each needs.
        own = [p for ps in heads for p in ps]
        grads = torch.autograd.grad(L, inputs, grad_outputs=w.to(device=L.device, dtype=L.dtype),
                                    retain_graph=retain_graph or bool(own), allow_unused=True,
                                    materialize_grads=True)
        if own:
            grads += torch.autograd.grad(L.sum(), own, retain_graph=retain_graph,
                                         allow_unused=True, materialize_grads=True)
            inputs += own
    else:
        w = [float(x) for x in w]
        for k, ps in enumerate(heads):
            if ps and w[k] != 1.0:
                # Not the term's own gradient unless w_k = 1: take it separately (autograd only
                # walks the head's small subgraph for these inputs).
                for p, g in zip(ps, torch.autograd.grad(L[k], ps, retain_graph=True,
                                                        allow_unused=True,
                                                        materialize_grads=True)):
                    p.grad = g
            elif ps:
                inputs += ps
        used = [k for k in range(len(heads)) if w[k] != 0.0]
        if not used:
            grads = [torch.zeros_like(p) for p in inputs]
        else:
            # (No tensor index built from `used`: that would be a host-to-device copy.)
            total = L.sum() if len(used) == len(w) and all(x == 1.0 for x in w) else \
                torch.stack([L[k] * w[k] if w[k] != 1.0 else L[k] for k in used]).sum()
            grads = torch.autograd.grad(total, inputs, retain_graph=retain_graph,
                                        allow_unused=True, materialize_grads=True)
    for p, g in zip(inputs, grads):
        p.grad = g


def _detached(aux) -> dict[str, torch.Tensor]:
    if not isinstance(aux, Mapping):
        raise ValueError(f"with has_aux, loss_fn must return (loss, dict of tensors); "
                         f"got aux of type {type(aux).__name__}")
    return {k: v.detach() for k, v in aux.items()}


def _write_rows(G_all: torch.Tensor, P: int, heads) -> None:
    """Row k's head columns (after the P shared ones) into term k's task parameters."""
    offset = P
    for k, ps in enumerate(heads):
        n = sum(p.numel() for p in ps)
        if n:   # a copy, so the .grad views do not keep the whole [K, P] matrix alive
            write_grads(ps, G_all[k, offset:offset + n].clone())
        offset += n


def apply_combined(combiner: Combiner, losses: Mapping[str, torch.Tensor], shared,
                   task_params: Mapping[str, Sequence[torch.Tensor]] | None = None, *,
                   strategy: str = "batched", layout: Layout | None = None,
                   retain_graph: bool = False) -> Stats:
    """Combine the gradients of named scalar `losses` on `shared` and write every `.grad`.

    `losses` keeps its order: the first term is the main one for main/aux combiners.
    `shared` is a list of parameters or of `(name, parameter)` pairs (then the default layout
    groups them by module). `task_params` maps a term name to the parameters only that term
    trains. `strategy` is "batched" or "sequential" (see `per_term_gradients`).
    """
    if not isinstance(losses, Mapping) or not losses:
        raise ValueError("losses must be a non-empty dict of named scalar loss terms")
    names = list(losses)
    shared, auto_layout = _split_named(shared)
    heads = _task_lists(task_params, names)
    _check_disjoint(shared, heads)
    L = torch.stack([losses[n].reshape(()) for n in names])
    w = combiner.fixed_weights(len(names))
    if w is not None:
        return _apply_fixed(combiner, w, names, L, shared, heads, retain_graph)
    params = shared + [p for ps in heads for p in ps]
    G_all = per_term_gradients(L, params, strategy=strategy, retain_graph=retain_graph)
    P = sum(p.numel() for p in shared)
    layout = auto_layout if layout is None else layout
    g, stats = combiner.combine(G_all[:, :P], L.detach(), layout, names=names)
    write_grads(shared, g)
    _write_rows(G_all, P, heads)
    return stats


def apply_task_split(combiner: Combiner, model: nn.Module, loss_fn: Callable[..., torch.Tensor],
                     task_batches, shared: Sequence[str],
                     task_params: Mapping[str, Sequence[str]] | Sequence[Sequence[str]]
                     | None = None, *, names: Sequence[str] | None = None,
                     layout: Layout | None = None, randomness: str = "error",
                     chunk_size: int | None = None, has_aux: bool = False,
                     batched_loss_fn: Callable[..., torch.Tensor] | None = None):
    """`apply_combined` for task-split batches: task k's loss `loss_fn(model, *batch_k)` uses
    only its own slice `task_batches[..][k]`, so G comes from one vmapped pass.

    `batched_loss_fn(model, *task_batches)`, when given, returns all K task losses `[K]` (with
    `has_aux`, `(losses, aux)`) from one plain forward over the whole batch; it must equal
    `loss_fn` vmapped over the task axis. An update whose weights are known in advance (`Sum`;
    `CosineGate` between measurements) then costs what a summed loss costs: one batched forward
    and one backward, no vmap and no functional_call. Without it such an update vmaps `loss_fn`
    for the K losses.

    Parameters are named as in `model.named_parameters()`; `task_params` gives per term (by
    index, or by name when `names` is given) the names only that task trains. With `has_aux`,
    `loss_fn` returns `(loss, aux)` with aux a dict of tensors (values the caller needs from
    the same forward pass) and the result is `(stats, aux)`, aux detached, stacked over tasks.
    """
    _, K = check_task_batches(task_batches)
    names = [f"task{k}" for k in range(K)] if names is None else list(names)
    if len(names) != K:
        raise ValueError(f"{len(names)} names for {K} tasks")
    named = dict(model.named_parameters())
    head_names = [list(ps) for ps in _task_lists(task_params, names)]
    unknown = [n for n in list(shared) + sum(head_names, []) if n not in named]
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}")
    shared_items = [(n, named[n]) for n in shared]
    shared_params, auto_layout = _split_named(shared_items)
    heads = [[named[n] for n in ps] for ps in head_names]
    _check_disjoint(shared_params, heads)
    w = combiner.fixed_weights(K)
    if w is not None:
        if batched_loss_fn is not None:
            out = batched_loss_fn(model, *check_task_batches(task_batches)[0])
        else:
            out = task_split_losses(model, loss_fn, task_batches, randomness=randomness,
                                    has_aux=has_aux)
        L, aux = out if has_aux else (out, None)
        if tuple(L.shape) != (K,):
            raise ValueError(f"the task losses must have shape [{K}], got {tuple(L.shape)}")
        stats = _apply_fixed(combiner, w, names, L, shared_params, heads, retain_graph=False)
        return (stats, _detached(aux)) if has_aux else stats
    out = task_split_gradients(model, loss_fn, task_batches,
                               list(shared) + [n for ps in head_names for n in ps],
                               randomness=randomness, chunk_size=chunk_size, has_aux=has_aux)
    G_all, L, aux = out if has_aux else (*out, None)
    P = sum(p.numel() for p in shared_params)
    layout = auto_layout if layout is None else layout
    g, stats = combiner.combine(G_all[:, :P], L, layout, names=names)
    write_grads(shared_params, g)
    _write_rows(G_all, P, heads)
    return (stats, _detached(aux)) if has_aux else stats


def _forward_term_names(names, task_params) -> list[str] | None:
    """Term names known before the aux losses are: given, or a mapping's keys in order, or
    main/aux1.. from a per-index list; None when only the aux count can tell (no heads)."""
    if names is not None:
        return [str(n) for n in names]
    if isinstance(task_params, Mapping):
        return [str(n) for n in task_params]
    if task_params is not None:
        return term_names(len(list(task_params)), None, "main_aux")
    return None


def apply_forward_dots(combiner: Combiner, model: nn.Module, main_loss: torch.Tensor,
                       aux_losses_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                       shared: Sequence[str],
                       task_params: Mapping[str, Sequence[str]] | Sequence[Sequence[str]]
                       | None = None, *, names: Sequence[str] | None = None,
                       aux_losses: torch.Tensor | None = None) -> Stats:
    """`apply_combined(combiner, {"main": main_loss, **aux}, shared, task_params)` for a
    combiner that needs only ∇L_main · ∇L_aux,i (`OLAux.weights_from_dots`), without G.

    `main_loss` is a scalar computed with autograd from `model`; `aux_losses_fn(params)`
    recomputes the aux losses `[K-1]` from a dict of the model's parameters by name (through
    `torch.func.functional_call`), so that a tangent can be pushed through it. `shared` names
    the shared parameters θ (as in `model.named_parameters()`); `task_params` gives per term
    the parameter names only that term trains, keyed by term name (main first, then the aux
    terms in order; its keys are the term names unless `names` is given) or listed by index.

    Cost: one backward of L_main for v = ∇θ L_main (and the main heads' gradient), one
    forward-mode pass of the aux losses along v, which gives every d_i = ∇θ L_aux,i · v and the
    aux values with their graph, and one backward of Σ_i coef_i L_aux,i. The shared `.grad` is
    v + ∇θ Σ_i coef_i L_aux,i = Σ_k coef_k ∇θ L_k (coef_0 = 1), so the main graph is walked
    once; each head gets its own term's gradient, unweighted.

    `aux_losses`, when given, are those aux losses `[K-1]` as the caller's own forward pass
    computed them (with their graph, sharing the main loss's torso): then the forward-mode
    pass only carries the tangent (no autograd graph is recorded for it, no second torso graph
    is walked back) and the backward of Σ_i coef_i L_aux,i runs through the caller's graph.
    """
    if not hasattr(combiner, "weights_from_dots"):
        raise ValueError(f"apply_forward_dots needs a combiner that works from dot products "
                         f"alone (OLAux); got {type(combiner).__name__}")
    if not isinstance(main_loss, torch.Tensor) or main_loss.numel() != 1:
        raise ValueError(f"main_loss must be a scalar tensor, got "
                         f"{getattr(main_loss, 'shape', type(main_loss))}")
    named = dict(model.named_parameters())
    shared = list(shared)
    names = _forward_term_names(names, task_params)
    head_names = _task_lists(task_params, names) if names is not None else [[]]
    unknown = [n for n in shared + [n for ps in head_names for n in ps] if n not in named]
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}")
    shared_params, _ = _split_named([(n, named[n]) for n in shared])
    heads = [[named[n] for n in ps] for ps in head_names]
    _check_disjoint(shared_params, heads)

    # v = ∇θ L_main; the main heads' gradient comes from the same backward.
    grads = torch.autograd.grad(main_loss.reshape(()), shared_params + heads[0],
                                allow_unused=True, materialize_grads=True,
                                retain_graph=aux_losses is not None)
    v, main_head_grads = grads[:len(shared)], grads[len(shared):]
    if aux_losses is None:
        aux, dots = directional_derivatives(aux_losses_fn, named, dict(zip(shared, v)))
    else:
        with torch.no_grad():   # the dots only: a tangent pass on detached weights
            _, dots = directional_derivatives(aux_losses_fn,
                                              {n: p.detach() for n, p in named.items()},
                                              dict(zip(shared, v)))
        aux = aux_losses.reshape(-1)
        if dots.shape != aux.shape:
            raise ValueError(f"aux_losses_fn gives {dots.numel()} aux losses, aux_losses has "
                             f"{aux.numel()}")
    K = aux.numel() + 1
    if names is None:
        names = term_names(K, None, "main_aux")
        heads = [[] for _ in names]
    elif len(names) != K:
        raise ValueError(f"aux_losses_fn returned {K - 1} aux losses, but the terms are "
                         f"{names} (main first)")
    L = torch.cat([main_loss.detach().reshape(1), aux.detach()])
    coef, stats = combiner.weights_from_dots(dots, L, names=names)

    _write_weighted(coef[1:], aux, shared_params, heads[1:], retain_graph=False)
    for p, g_main in zip(shared_params, v):
        p.grad = p.grad + g_main        # coef_0 = 1
    for p, g in zip(heads[0], main_head_grads):
        p.grad = g
    return stats
