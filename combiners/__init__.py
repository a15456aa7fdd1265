"""Gradient combiners for multi-task and auxiliary-task learning (pure torch, no Ray).

A combiner turns per-term gradients `G[K, P]` on the shared parameters into one gradient:

- `Sum`: fixed weighted sum (the baseline).
- `CosineGate`: paper 000, cosine gating of auxiliary gradients.
- `OLAux`: paper 001, online-learned auxiliary weights.
- `PCGrad`: paper 003, projecting conflicting task gradients.

`apply_combined` / `apply_task_split` go from named losses to `.grad`; `per_term_gradients` and
`task_split_gradients` build G; `apply_forward_dots` runs OL-AUX from the dot products that
`directional_derivatives` gives in one forward-mode pass; `make_combiner` builds one from a
config name.
"""
from combiners.apply import apply_combined, apply_forward_dots, apply_task_split
from combiners.base import Combiner
from combiners.cosine_gate import CosineGate
from combiners.forward_dots import directional_derivatives
from combiners.gradients import (flatten, per_term_gradients, read_grads, task_split_gradients,
                                 task_split_losses, unflatten, write_grads)
from combiners.layout import Layout
from combiners.olaux import OLAux
from combiners.pcgrad import PCGrad, pcgrad_coefficients, pcgrad_project
from combiners.sum import Sum

COMBINERS = {"sum": Sum, "cosine_gate": CosineGate, "olaux": OLAux, "pcgrad": PCGrad}


def make_combiner(name: str, **kwargs) -> Combiner:
    """Build a combiner from its config name ("sum", "cosine_gate", "olaux", "pcgrad")."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in COMBINERS:
        raise ValueError(f"unknown combiner {name!r}; expected one of {sorted(COMBINERS)}")
    try:
        return COMBINERS[key](**kwargs)
    except TypeError as err:  # unknown keyword: say which combiner and what it takes
        raise ValueError(f"bad arguments for combiner {key!r}: {err}") from None


__all__ = [
    "COMBINERS", "Combiner", "CosineGate", "Layout", "OLAux", "PCGrad", "Sum", "apply_combined",
    "apply_forward_dots", "apply_task_split", "directional_derivatives", "flatten",
    "make_combiner", "pcgrad_coefficients", "pcgrad_project", "per_term_gradients", "read_grads",
    "task_split_gradients", "task_split_losses", "unflatten", "write_grads",
]
