"""How the IMPALA learner's loss terms meet on the shared weights: which named terms the
combiner sees, and which parameters are shared (combined) or belong to one term.

Three layouts, chosen once from the config:

- "plain": one task, no aux terms, `sum`: one backward of the V-trace loss.
- "main_aux": a main/aux combiner (cosine_gate, olaux) with aux terms. The combiner sees
  `main` (the V-trace loss of the whole batch, i.e. of every task: paper 000's multi-task
  L_main) and `aux/<name>` for each aux term. Policy heads are reached by the main term and by
  distillation, so they are shared; each aux head gets its own term's gradient, and so does a
  separate value network (`vf_share_layers: false`) the main term's.
- "tasks": a task combiner (sum, pcgrad), or a main/aux one without aux terms (then the first
  task is main). The combiner sees `task/<name>` per task: its V-trace loss plus its aux terms,
  each on that task's own unrolls, so every task keeps its aux terms. Aux heads are shared by
  all tasks' terms; per-task policy heads get their own task's gradient.

A parameter is task-specific only when exactly one term reaches it; everything else is shared.
"""
from __future__ import annotations

import torch

from learner.aux import reduce_term


def layout_kind(lcfg, num_tasks: int) -> str:
    from combiners import COMBINERS

    role = COMBINERS[lcfg.combiner.name].role
    if lcfg.aux and role == "main_aux":
        return "main_aux"
    if num_tasks > 1 or lcfg.aux or lcfg.combiner.name != "sum":
        return "tasks"
    return "plain"


def combiner_options(ccfg, num_tasks: int) -> dict:
    """The combiner's keyword arguments; cosine_gate's threshold defaults to paper 000's Atari
    setting (App. G): 0.02 for one game, 0.01 multi-task (its ema already defaults to 0.999
    and its cosine to the per-layer mean)."""
    options = dict(ccfg.options)
    if ccfg.name == "cosine_gate":
        options.setdefault("threshold", 0.02 if num_tasks == 1 else 0.01)
    return options


def parameter_roles(kind: str, model, aux_terms, task_names) -> tuple[list, dict | None]:
    """(shared as (name, parameter) pairs, {term name: its own parameters} or None)."""
    named = {id(p): n for n, p in model.named_parameters()}
    aux_named = {id(p): f"aux.{n}" for n, p in aux_terms.named_parameters()}
    if kind == "main_aux":
        value = {id(p) for p in model.value_parameters()}
        shared = [(named[id(p)], p) for p in model.parameters() if id(p) not in value]
        own = {"main": model.value_parameters(),
               **{f"aux/{name}": list(term.parameters()) for name, term in aux_terms.items()}}
        return shared, own
    shared = [(named[id(p)], p) for p in model.shared_parameters()]
    shared += [(aux_named[id(p)], p) for p in aux_terms.parameters()]
    heads = model.task_parameters()
    own = {f"task/{t}": heads[i] for i, t in enumerate(task_names)} if heads else None
    return shared, own


def aux_term_values(aux_steps: dict, columns, reduction: str, aux_terms) -> dict[str, torch.Tensor]:
    """`aux/<name>`: each term's weighted loss over `columns`: None (or `slice(None)`) for
    all of them, or a `[B]` bool mask on the device (no index built on the host)."""
    def reduce(loss, mask):
        if columns is None or isinstance(columns, slice):
            return reduce_term(loss, mask, slice(None) if columns is None else columns, reduction)
        return reduce_term(loss, mask * columns[None, :].to(mask.dtype), slice(None), reduction)
    return {f"aux/{name}": aux_terms[name].weight * reduce(loss, mask)
            for name, (loss, mask) in aux_steps.items()}


class AuxLosses(torch.nn.Module):
    """The aux terms' weighted losses `[n]` as one function of every parameter (actor-critic
    under `model.`, aux heads under `aux.`), for OL-AUX's forward-mode dot products
    (`combiners.apply_forward_dots`, learner.combiner.strategy: forward): the torso is re-run
    inside the jvp so that the tangent ∇θ L_main reaches the aux losses through z. The learner
    runs it as a tangent pass only (no autograd graph): the aux losses that train come from
    the update's own forward pass."""

    def __init__(self, model, aux_terms, reduction: str):
        super().__init__()
        self.model, self.aux = model, aux_terms
        self.reduction = reduction

    def forward(self, flat_obs, head_ids, make_batch) -> torch.Tensor:
        z, logits, _ = self.model.features_and_outputs(flat_obs, head_ids)
        batch = make_batch(z.float(), logits.float())
        values = aux_term_values({name: term.per_step(batch) for name, term in self.aux.items()},
                                 slice(None), self.reduction, self.aux)
        return torch.stack(list(values.values()))

    def names_of(self, params) -> list[str]:
        named = {id(p): n for n, p in self.named_parameters()}
        return [named[id(p)] for p in params]
