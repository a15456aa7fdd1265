"""accord's gradient combiners inside RLlib's own TorchLearner (new API stack, Ray 2.60).

RLlib's `TorchLearner.compute_gradients` sums `loss_per_module` and runs one backward, so the
tasks that share an encoder are mixed before anyone can look at their gradients. The seam is
`compute_gradients` (RLlib's compute_gradients -> postprocess_gradients -> apply_gradients):
`CombinedGradientsMixin` replaces only that step. It collects named loss terms, builds their
gradients on the shared parameters, lets an accord combiner produce one gradient, and writes
every `.grad`. RLlib's own `postprocess_gradients` (grad_clip per optimizer, gradient logging)
and `apply_gradients` (NaN handling, lr schedules, optimizer steps) run unchanged afterwards.

    config.learners(learner_class=AccordPPOTorchLearner,
                    learner_config_dict=combiner_settings("pcgrad", seed=0))

(`config.learners(...)`: Ray 2.60 deprecates passing these two to `config.training(...)`,
which still works.)

Loss terms. One term per module of the MultiRLModule (one module per task), named by its
module id. A `compute_loss_for_module` may instead stash several terms for its module with
`self.add_loss_terms(module_id, {"main": l_main, "aux/inverse": l_inv})` (main first, for
the main/aux combiners); they replace the module's returned total as `<module_id>/<name>`.

Shared and task parameters, explicitly. A term's parameters are those its module registers
with its optimizers (`term_parameters`, overridable). A parameter listed by two or more terms
is shared and gets the combined gradient; the others belong to one term and get that term's
own gradient, untouched (Alg. 1 of paper 003). Stashed main + aux terms of one module all list
that module's parameters, so there all of them are shared: override `term_parameters` to give
an aux head its own gradient.

One step for shared parameters. RLlib builds one optimizer per module over
`module.parameters()`; an encoder object held by K modules then sits in K optimizers and is
stepped K times per update (and clipped K times, in place). `register_optimizer` here keeps a
parameter in the first optimizer that registers it and drops it from the later ones, so the
shared encoder is clipped with, and stepped by, the first module's optimizer, once.

Several learners (`num_learners > 1`, DDP). DDP's hooks fire only inside `.backward()`,
which the combiners do not call, so the update runs like RLlib's own APPO/IMPALA multi-agent
path: forward, losses and the combination run under `no_sync()`; each learner combines the
per-term gradients of its own shard of the batch; then every `.grad` is all-reduced and
averaged over the learners that had it, before RLlib's clipping and optimizer step. The result
is the mean over learners of per-shard combined gradients (for `Sum`, exactly DDP's averaged
gradient; for PCGrad, projections are decided per shard).

Not supported: RLlib's mixed precision (`_torch_grad_scaler_class`) and
`torch_compile_learner_what_to_compile="complete_update"`; both raise at build time.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
from ray.rllib.algorithms.impala.torch.impala_torch_learner import IMPALATorchLearner
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
from ray.rllib.core import ALL_MODULES
from ray.rllib.core.learner.learner import DEFAULT_OPTIMIZER

from combiners import Combiner, apply_combined, make_combiner

COMBINER_KEY = "accord_combiner"
KWARGS_KEY = "accord_combiner_kwargs"
STATS_KEY = "accord"


def combiner_settings(name: str, **kwargs) -> dict:
    """`learner_config_dict` entries that pick the combiner (checked here, built per learner)."""
    make_combiner(name, **kwargs)       # a bad name or argument fails now, not on a remote actor
    return {COMBINER_KEY: name, KWARGS_KEY: dict(kwargs)}


class CombinedGradientsMixin:
    """Put before an RLlib TorchLearner class: `class L(CombinedGradientsMixin, PPOTorchLearner)`.

    Reads the combiner from `config.learner_config_dict` (`combiner_settings`). Statistics
    (PCGrad conflicts, cosines, gates, weights, norms) go to the MetricsLogger under
    `(ALL_MODULES, "accord", <stat>)`, i.e. `result["learners"]["__all_modules__"]["accord"]`.
    """

    def build(self) -> None:
        settings = self.config.learner_config_dict or {}
        if COMBINER_KEY not in settings:
            raise ValueError(f"{type(self).__name__} needs a combiner: pass "
                             f"config.learners(learner_config_dict=combiner_settings(...))")
        if self.config._torch_grad_scaler_class:
            raise ValueError("combined gradients do not support torch grad scalers")
        self._combiner_name = settings[COMBINER_KEY]
        self._combiner_kwargs = dict(settings.get(KWARGS_KEY) or {})
        #: one combiner per group of terms combined together (stateful: EMAs, weights, RNG).
        self._combiners: dict[str, Combiner] = {}
        #: parameters each (module, optimizer) asked for, before shared ones were deduplicated.
        self._registered_params: dict[tuple[str, str], list[torch.Tensor]] = {}
        self._stashed_terms: dict[str, dict[str, torch.Tensor]] = {}
        super().build()
        if getattr(self, "_torch_compile_complete_update", False):
            raise ValueError("combined gradients do not support compiling the complete update")

    # ---- optimizers: every parameter in exactly one optimizer -------------------------------

    def register_optimizer(self, *, module_id: str = ALL_MODULES,
                           optimizer_name: str = DEFAULT_OPTIMIZER, optimizer, params,
                           lr_or_lr_schedule=None) -> None:
        self._registered_params[(module_id, optimizer_name)] = list(params)
        owned = {id(p) for refs in self._optimizer_parameters.values() for p in refs}
        keep = [p for p in params if id(p) not in owned]
        if len(keep) < len(params):
            # The optimizer is fresh (no state yet): dropping a parameter now is safe. Keeping
            # it would step the shared encoder once per module that holds it.
            kept = {id(p) for p in keep}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) in kept]
            optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        super().register_optimizer(module_id=module_id, optimizer_name=optimizer_name,
                                   optimizer=optimizer, params=keep,
                                   lr_or_lr_schedule=lr_or_lr_schedule)

    # ---- loss terms --------------------------------------------------------------------------

    def add_loss_terms(self, module_id: str, terms: Mapping[str, torch.Tensor]) -> None:
        """Called from `compute_loss_for_module`: these named terms replace the module's total."""
        if not terms:
            raise ValueError(f"no loss terms given for module {module_id!r}")
        self._stashed_terms[module_id] = dict(terms)

    def compute_losses(self, *, fwd_out, batch):
        self._stashed_terms = {}
        return super().compute_losses(fwd_out=fwd_out, batch=batch)

    def _loss_terms(self, loss_per_module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Named terms in order, and the module each comes from."""
        terms, owner = {}, {}
        for module_id, loss in loss_per_module.items():
            stashed = self._stashed_terms.get(module_id)
            for name, term in (stashed.items() if stashed else [(None, loss)]):
                key = module_id if name is None else f"{module_id}/{name}"
                if isinstance(term, torch.Tensor) and term.requires_grad:
                    terms[key], owner[key] = term, module_id
        self._stashed_terms = {}
        return terms, owner

    def term_parameters(self, term: str, module_id: str,
                        optimizer_name: str | None = None) -> list[torch.Tensor]:
        """Parameters term `term` trains: those its module registered (with that optimizer)."""
        out, seen = [], set()
        for (mid, name), params in self._registered_params.items():
            if mid == module_id and (optimizer_name is None or name == optimizer_name):
                for p in params:
                    if id(p) not in seen and p.requires_grad:
                        seen.add(id(p))
                        out.append(p)
        return out

    # ---- the seam ----------------------------------------------------------------------------

    def compute_gradients(self, loss_per_module, **kwargs):
        for optim in self._optimizer_parameters:
            optim.zero_grad(set_to_none=True)
        terms, owner = self._loss_terms(loss_per_module)
        if not terms:
            return {}
        params = {k: self.term_parameters(k, owner[k]) for k in terms}
        self._combine("all", terms, params)
        return {pid: p.grad for pid, p in self._params.items()}

    def _combine(self, group: str, terms: dict[str, torch.Tensor],
                 params: dict[str, list[torch.Tensor]], retain_graph: bool = False) -> None:
        """Write `.grad` of `params` only: the combiner's gradient on the parameters listed by
        several terms, each term's own gradient on the rest."""
        count: dict[int, int] = {}
        for ps in params.values():
            for p in ps:
                count[id(p)] = count.get(id(p), 0) + 1
        names = self._parameter_names()
        shared, seen = [], set()
        for ps in params.values():
            for p in ps:
                if count[id(p)] > 1 and id(p) not in seen:
                    seen.add(id(p))
                    shared.append((names.get(id(p), f"p{len(shared)}"), p))
        heads = {k: [p for p in ps if count[id(p)] == 1] for k, ps in params.items()}
        if not shared:
            # Nothing is shared: each term's parameters get its own gradient, as in RLlib.
            inputs = [p for ps in heads.values() for p in ps]
            grads = torch.autograd.grad(sum(terms.values()), inputs, retain_graph=retain_graph,
                                        allow_unused=True, materialize_grads=True)
            for p, g in zip(inputs, grads):
                p.grad = g
            return
        combiner = self._combiners.get(group)
        if combiner is None:
            combiner = self._combiners[group] = make_combiner(self._combiner_name,
                                                              **self._combiner_kwargs)
        stats = apply_combined(combiner, terms, shared=shared, task_params=heads,
                               retain_graph=retain_graph)
        prefix = () if group == "all" else (group,)
        for key, value in stats.items():
            self.metrics.log_value((ALL_MODULES, STATS_KEY) + prefix + (key,), float(value),
                                   window=1)

    def _parameter_names(self) -> dict[int, str]:
        if getattr(self, "_param_names", None) is None:
            # A tied encoder is named after the first module (sorted ids) that holds it.
            names: dict[int, str] = {}
            for mid in sorted(self.module.keys()):
                sub = self.module[mid]
                if isinstance(sub, torch.nn.Module):
                    for n, p in sub.named_parameters():
                        names.setdefault(id(p), f"{mid}.{n}")
            self._param_names = names
        return self._param_names

    # ---- several learners --------------------------------------------------------------------

    def _uncompiled_update(self, batch, **kwargs):
        if self.config.num_learners < 2:
            return super()._uncompiled_update(batch, **kwargs)
        self._compute_off_policyness(batch)
        with contextlib.ExitStack() as stack:
            # DDP prepares its reducer in forward; no_sync keeps it from waiting for a
            # backward that the combiners replace with torch.autograd.grad.
            for mod in self.module.values():
                if isinstance(mod, torch.nn.Module) and hasattr(mod, "no_sync"):
                    stack.enter_context(mod.no_sync())
            fwd_out = self.module.forward_train(batch)
            loss_per_module = self.compute_losses(fwd_out=fwd_out, batch=batch)
            self.compute_gradients(loss_per_module)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        for param in self._params.values():
            # Every learner joins every all_reduce (zeros where its shard did not reach a
            # parameter), and divides by the number of learners that did.
            present = param.grad is not None
            if not present:
                param.grad = torch.zeros_like(param)
            torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)
            denom = torch.tensor(float(present), device=param.device, dtype=param.dtype)
            torch.distributed.all_reduce(denom, op=torch.distributed.ReduceOp.SUM)
            param.grad.div_(denom.clamp(min=1.0))
        gradients = {pid: p.grad for pid, p in self._params.items()}
        self.apply_gradients(self.postprocess_gradients(gradients))
        return fwd_out, loss_per_module, {}


class AccordPPOTorchLearner(CombinedGradientsMixin, PPOTorchLearner):
    """RLlib PPO with an accord combiner on the shared parameters."""


class AccordIMPALATorchLearner(CombinedGradientsMixin, IMPALATorchLearner):
    """RLlib IMPALA with an accord combiner on the shared parameters."""


class AccordAPPOTorchLearner(CombinedGradientsMixin, APPOTorchLearner):
    """RLlib APPO with an accord combiner on the shared parameters."""


class AccordSACTorchLearner(CombinedGradientsMixin, SACTorchLearner):
    """RLlib SAC with an accord combiner per optimizer (critic, twin critic, policy, alpha).

    SAC stashes one loss per (module, optimizer) and RLlib steps each optimizer on its own
    loss. Here, for each optimizer name, the modules' losses for it are the terms, combined on
    the parameters that several modules register with that optimizer (a shared pi or Q
    encoder); each optimizer group has its own combiner and its statistics sit under
    `(ALL_MODULES, "accord", <optimizer name>, <stat>)`.
    """

    def compute_gradients(self, loss_per_module, **kwargs):
        for optim in self._optimizer_parameters:
            optim.zero_grad(set_to_none=True)
        by_optimizer: dict[str, dict[str, torch.Tensor]] = {}
        for module_id in [m for m in loss_per_module if m != ALL_MODULES]:
            for optim_name, _ in self.get_optimizers_for_module(module_id):
                loss = self._temp_losses.pop((module_id, optim_name + "_loss"))
                by_optimizer.setdefault(optim_name, {})[module_id] = loss
        self._stashed_terms = {}
        groups = list(by_optimizer.items())
        for i, (optim_name, terms) in enumerate(groups):
            # Each component writes only its own optimizer's parameters (SAC's policy loss
            # also reaches the critics, whose gradient comes from their own loss alone); the
            # components share one graph, kept until the last.
            params = {mid: self.term_parameters(mid, mid, optim_name) for mid in terms}
            self._combine(optim_name, terms, params, retain_graph=i < len(groups) - 1)
        return {pid: p.grad for pid, p in self._params.items()}
