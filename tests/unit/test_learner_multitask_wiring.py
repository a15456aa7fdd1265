"""The multi-task `ImpalaLearner` against an independent path: each task's loss by the plain
loop of `impala_reference`, its gradient taken on its own, and a fresh combiner of the same
settings applied to those rows. The shared weights must get exactly the combined gradient,
each task head exactly its own task's gradient, over several updates (so combiner state such
as OL-AUX's horizon and CosineGate's `every` is exercised), with sum and mean reductions."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from accord.config import config_from_dict
from combiners import Layout, make_combiner
from envs import EnvSpec
from learner.impala.learner import ImpalaLearner
from tests.unit.impala_reference import flat_grad, hand_made_batch, reference_total

SPEC = EnvSpec((4,), np.dtype(np.float32), num_actions=2)
TASKS = ["CartPole-v1", "Acrobot-v1"]
TASK_IDS = (0, 1, 0, 1, 1)  # interleaved, so a column routed to the wrong task shows


def make_learner(combiner: str, options: dict, heads: bool, reduction: str) -> ImpalaLearner:
    cfg = config_from_dict({
        "env": {"kind": "gym", "tasks": TASKS, "envs_per_actor": 5},
        "actors": {"num_actors": 2, "unroll_length": 4},
        "learner": {"model": "mlp", "batch_size": 5, "per_task_heads": heads, "lr_decay": False,
                    "lr": 1e-3, "max_grad_norm": 1e6, "loss_reduction": reduction,
                    "discount": 0.9, "combiner": {"name": combiner, "options": options}},
    })
    torch.manual_seed(0)
    return ImpalaLearner(cfg, SPEC, device="cpu")


def reference_step(model, combiner, batch, lcfg):
    """(shared gradient, per-task head gradients, combiner stats) computed independently."""
    shared = model.shared_parameters()
    shared_ids = {id(p) for p in shared}
    named_shared = [(n, p) for n, p in model.named_parameters() if id(p) in shared_ids]
    heads = model.task_parameters()
    losses, rows, head_grads = [], [], []
    for k in range(len(TASKS)):
        cols = [b for b in range(len(batch["task_id"])) if batch["task_id"][b] == k]
        loss = reference_total(model, batch, lcfg, cols) if cols else torch.zeros(())
        losses.append(loss.detach())
        rows.append(flat_grad(loss, [p for _, p in named_shared]) if cols
                    else torch.zeros(sum(p.numel() for p in shared)))
        if heads:
            head_grads.append(flat_grad(loss, heads[k]) if cols
                              else torch.zeros(sum(p.numel() for p in heads[k])))
    G, L = torch.stack(rows), torch.stack(losses)
    names = [f"task/{t}" for t in TASKS]
    w = combiner.fixed_weights(len(TASKS))
    if w is None:
        g, stats = combiner.combine(G, L, Layout.from_parameters(named_shared), names=names)
    else:
        g, stats = torch.as_tensor(w).to(G.dtype) @ G, combiner.record_fixed(L, names)
    return g, head_grads, stats


CASES = [
    ("pcgrad", {"seed": 3}, True, "mean"),
    ("pcgrad", {"seed": 3}, False, "sum"),
    ("olaux", {"horizon": 2, "lr": 0.05, "log_losses": False}, True, "sum"),
    ("cosine_gate", {"mode": "weighted", "ema": 0.5, "every": 2}, True, "mean"),
    ("sum", {"weights": [1.0, 0.25]}, True, "mean"),
]


@pytest.mark.parametrize("combiner,options,heads,reduction", CASES,
                         ids=[f"{c[0]}-heads{c[2]}-{c[3]}" for c in CASES])
def test_shared_gradient_is_the_combiner_applied_to_independent_task_gradients(
        combiner, options, heads, reduction):
    learner = make_learner(combiner, options, heads, reduction)
    reference_combiner = make_combiner(combiner, **options)
    seen = {}
    for step in range(4):
        batch = hand_made_batch(task_id=TASK_IDS, seed=10 + step)
        model = copy.deepcopy(learner.model)  # the weights this update starts from
        metrics = learner.update(batch)
        g, head_grads, stats = reference_step(model, reference_combiner, batch, learner.lcfg)
        got = torch.cat([p.grad.flatten() for p in learner.model.shared_parameters()])
        torch.testing.assert_close(got, g.to(got.dtype), rtol=2e-4, atol=1e-6,
                                   msg=f"shared gradient, update {step}")
        for k, head in enumerate(learner.model.task_parameters()):
            got_head = torch.cat([p.grad.flatten() for p in head])
            torch.testing.assert_close(got_head, head_grads[k], rtol=2e-4, atol=1e-6,
                                       msg=f"head {k}, update {step}")
        for key, value in stats.items():
            value = float(value)
            assert metrics[f"combiner/{key}"] == pytest.approx(value, rel=1e-3, abs=1e-6), key
            seen.setdefault(key, []).append(value)
    # The cases are built so that each combiner does more than a plain sum here.
    if combiner == "pcgrad":
        assert max(seen["pcgrad/conflicts"]) > 0
    if combiner == "olaux":
        assert len(set(seen["w/task/Acrobot-v1"])) > 1  # w moved after the horizon
    if combiner == "cosine_gate":
        assert seen["gate/measured"] == [1.0, 0.0, 1.0, 0.0]
        assert 0.0 < min(seen["gate/task/Acrobot-v1"]) < 1.0


def test_a_task_missing_from_the_batch_gives_its_head_no_gradient_and_the_torso_one_task():
    learner = make_learner("pcgrad", {"seed": 0}, True, "sum")
    batch = hand_made_batch(task_id=(0, 0, 0), seed=4)
    model = copy.deepcopy(learner.model)
    learner.update(batch)
    g, head_grads, _ = reference_step(model, make_combiner("pcgrad", seed=0), batch, learner.lcfg)
    got = torch.cat([p.grad.flatten() for p in learner.model.shared_parameters()])
    torch.testing.assert_close(got, g, rtol=2e-4, atol=1e-6)
    assert not any(p.grad.any() for p in learner.model.task_parameters()[1])


def test_a_task_with_a_single_column_is_a_task_not_a_missing_one():
    learner = make_learner("pcgrad", {"seed": 0}, True, "sum")
    batch = hand_made_batch(task_id=(0, 0, 1), seed=5)
    model = copy.deepcopy(learner.model)
    learner.update(batch)
    _, head_grads, _ = reference_step(model, make_combiner("pcgrad", seed=0), batch, learner.lcfg)
    got = torch.cat([p.grad.flatten() for p in learner.model.task_parameters()[1]])
    assert head_grads[1].abs().sum() > 0
    torch.testing.assert_close(got, head_grads[1], rtol=2e-4, atol=1e-6)
