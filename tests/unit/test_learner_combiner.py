"""The learner's multi-task path: one V-trace loss per task, combined on the shared weights."""
import copy

import numpy as np
import pytest
import torch

from accord.config import config_from_dict
from learner.checkpoint import load_checkpoint, save_checkpoint
from envs import EnvSpec
from learner.impala.learner import ImpalaLearner as Learner
from tests.unit.impala_reference import flat_grad, reference_total

SPEC = EnvSpec((4,), np.dtype(np.float32), num_actions=2)

TASKS = ["CartPole-v1", "CartPole-v0"]


def _cfg(tasks, combiner="sum", heads=False, options=None):
    return config_from_dict({
        "env": {"kind": "gym", "tasks": tasks, "envs_per_actor": 2},
        "actors": {"num_actors": 2},
        "learner": {"model": "mlp", "batch_size": 4, "per_task_heads": heads, "lr_decay": False,
                    "combiner": {"name": combiner, "options": options or {}}},
        "queue": {"capacity": 8},
    })


def _batch(seed, task_id=(0, 0, 1, 1), T=5):
    rng = np.random.default_rng(seed)
    B = len(task_id)
    return {"obs": rng.normal(size=(T + 1, B, 4)).astype(np.float32),
            "actions": rng.integers(0, 2, (T, B)), "rewards": rng.normal(size=(T, B)).astype(np.float32),
            "terminated": rng.random((T, B)) < 0.1, "truncated": np.zeros((T, B), bool),
            "behaviour_logits": rng.normal(size=(T, B, 2)).astype(np.float32),
            "task_id": np.asarray(task_id), "versions": np.zeros(2, np.int64),
            "episodes": np.zeros((0, 4))}


def _params(learner):
    return [p.detach().clone() for p in learner.model.parameters()]


def test_sum_over_tasks_equals_one_backward_of_the_whole_batch():
    # With summed V-trace losses, the per-task losses add up to the whole-batch loss, so the
    # Sum combiner must reproduce the plain single-loss update.
    torch.manual_seed(0)
    plain = Learner(_cfg(TASKS[:1]), SPEC)
    torch.manual_seed(0)
    combined = Learner(_cfg(TASKS), SPEC)
    assert plain.combiner is None and combined.combiner is not None
    for seed in range(3):
        m_plain = plain.update(_batch(seed))
        m_comb = combined.update(_batch(seed))
        assert m_comb["loss/total"] == pytest.approx(m_plain["loss/total"], rel=1e-5)
    for a, b in zip(_params(plain), _params(combined)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_pcgrad_leaves_each_task_head_its_own_gradient():
    torch.manual_seed(0)
    learner = Learner(_cfg(TASKS, "pcgrad", heads=True, options={"seed": 0}), SPEC)
    batch = _batch(7)
    # The reference: task 1's loss alone (its columns, a plain loop over them) on a copy of the
    # model, differentiated w.r.t. head 1.
    model = copy.deepcopy(learner.model)
    cols = np.flatnonzero(batch["task_id"] == 1)
    head = list(model.heads[1].parameters())
    expected = flat_grad(reference_total(model, batch, learner.lcfg, cols), head)
    learner.optimizer.step = lambda: None
    metrics = learner.update(batch)
    assert "combiner/pcgrad/conflicts" in metrics
    got = torch.cat([p.grad.flatten() for p in learner.model.heads[1].parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # The shared weights' gradient is checked against the combiner applied to independent
    # per-task gradients in test_learner_multitask_wiring.py.


def test_a_task_missing_from_the_batch_is_a_zero_row():
    torch.manual_seed(0)
    learner = Learner(_cfg(TASKS, "pcgrad", options={"seed": 0}), SPEC)
    metrics = learner.update(_batch(1, task_id=(0, 0, 0, 0)))
    assert metrics["combiner/norm/task/CartPole-v0"] == 0.0
    assert metrics["combiner/norm/task/CartPole-v1"] > 0.0


def test_resume_with_a_stateful_combiner_is_exact(tmp_path):
    cfg = _cfg(TASKS, "cosine_gate", options={"ema": 0.9})
    torch.manual_seed(0)
    first = Learner(cfg, SPEC)
    for seed in range(3):
        first.update(_batch(seed))
    path = save_checkpoint(tmp_path, first.state_dict(), first.updates)
    torch.manual_seed(123)
    second = Learner(cfg, SPEC)
    second.load_state_dict(load_checkpoint(path))
    for seed in (10, 11):
        a, b = first.update(_batch(seed)), second.update(_batch(seed))
        assert a["combiner/cos/task/CartPole-v0"] == b["combiner/cos/task/CartPole-v0"]
    for p, q in zip(_params(first), _params(second)):
        assert torch.equal(p, q)
