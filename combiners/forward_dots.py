"""Dot products of gradients with one direction, from one forward-mode pass.

OL-AUX (Lin et al., NeurIPS 2019, paper 001, Alg. 1) steps its weights with only the dot
products d_i = ∇θ L_main · ∇θ L_aux,i, never the aux gradients themselves. Along the direction
v = ∇θ L_main, the directional derivative of each aux loss is exactly that dot product:

    d/dε L_aux,i(θ + ε v) |_{ε=0} = ∇θ L_aux,i(θ) · v = d_i ,

and forward-mode differentiation (a Jacobian-vector product) gives it for every i at once, for
about the cost of one more forward pass carrying tangents, instead of building G[K, P] with K
rows of backward passes.

Parameters without a tangent are held fixed, so the derivative is taken on the named ones
only (the shared θ, not the heads). When the parameters require grad, the loss values that
`torch.func.jvp` returns keep their autograd graph (torch.func composes with autograd), so the
same pass also gives the values to backpropagate; the dot products are returned detached.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


def directional_derivatives(fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                            params: Mapping[str, torch.Tensor],
                            tangents: Mapping[str, torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, dots)`: `values = fn(params)`, a 1-D tensor, and `dots[i] = ∇ values[i] · v`
    where v is `tangents` on the parameters it names and zero on the others.

    `fn(params_dict)` must compute its outputs from the tensors it is given (e.g. through
    `torch.func.functional_call`), so that the tangents reach them. `values` carries the
    autograd graph of `params` when they require grad; `dots` is detached.
    """
    unknown = [n for n in tangents if n not in params]
    if unknown:
        raise ValueError(f"tangents name unknown parameters {unknown}")
    if not tangents:
        raise ValueError("no tangents given: the direction v is empty")
    for n, t in tangents.items():
        if tuple(t.shape) != tuple(params[n].shape):
            raise ValueError(f"tangent for {n!r} has shape {tuple(t.shape)}, parameter has "
                             f"{tuple(params[n].shape)}")
    moving_names = list(tangents)

    def along_v(moving: dict[str, torch.Tensor]) -> torch.Tensor:
        # Keep the caller's parameter order; only the named ones carry a tangent.
        return fn({n: moving.get(n, p) for n, p in params.items()})

    primals = {n: params[n] for n in moving_names}
    directions = {n: tangents[n].detach().to(dtype=params[n].dtype) for n in moving_names}
    values, dots = torch.func.jvp(along_v, (primals,), (directions,))
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        raise ValueError(f"fn must return a 1-D tensor of losses, got "
                         f"{getattr(values, 'shape', type(values))}")
    return values, dots.detach()
