"""`ImpalaLearner.update` against a plain loop over a hand-made batch: the loss terms, the
gradient on every weight, the clipping and the RMSProp step must all match, on a batch with a
termination, a truncation and unrolls that bootstrap from V(x_T)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from accord.config import config_from_dict
from envs import EnvSpec
from learner.impala.learner import ImpalaLearner
from tests.unit.impala_reference import hand_made_batch, reference_loss

SPEC = EnvSpec((4,), np.dtype(np.float32), num_actions=2)


def make_learner(seed: int = 0, **learner) -> ImpalaLearner:
    cfg = config_from_dict({
        "env": {"kind": "gym", "tasks": ["CartPole-v1"], "envs_per_actor": 3},
        "actors": {"num_actors": 1, "unroll_length": 4},
        "learner": {"model": "mlp", "batch_size": 3, "lr_decay": False, "max_grad_norm": 1e6,
                    "discount": 0.9, **learner},
    })
    torch.manual_seed(seed)
    return ImpalaLearner(cfg, SPEC, device="cpu")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_terms_and_gradients_match_a_plain_loop(reduction):
    learner = make_learner(loss_reduction=reduction)
    batch = hand_made_batch()
    reference = copy.deepcopy(learner.model)
    learner.optimizer.step = lambda: None  # keep the weights the gradient was taken at
    metrics = learner.update(batch)

    terms = reference_loss(reference, batch, learner.lcfg, range(3))
    for name, value in terms.items():
        assert metrics[f"loss/{name}"] == pytest.approx(float(value.detach()), rel=1e-4, abs=1e-6), name
    total = sum(terms.values())
    assert metrics["loss/total"] == pytest.approx(float(total.detach()), rel=1e-4)
    total.backward()
    for (name, p), q in zip(learner.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    norm = torch.cat([q.grad.flatten() for q in reference.parameters()]).norm()
    assert metrics["learner/grad_norm"] == pytest.approx(float(norm), rel=1e-4)


def test_the_gradient_is_clipped_to_max_grad_norm_along_the_same_direction():
    learner = make_learner(max_grad_norm=0.05)
    batch = hand_made_batch(seed=1)
    reference = copy.deepcopy(learner.model)
    learner.optimizer.step = lambda: None
    learner.update(batch)
    sum(reference_loss(reference, batch, learner.lcfg, range(3)).values()).backward()
    norm = torch.cat([q.grad.flatten() for q in reference.parameters()]).norm()
    assert norm > 0.05  # the clip is active
    for p, q in zip(learner.model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad * (0.05 / norm), rtol=1e-4, atol=1e-6)


def test_the_step_is_rmsprop_with_the_configured_settings():
    settings = {"lr": 3e-3, "rmsprop_alpha": 0.9, "rmsprop_eps": 0.05, "rmsprop_momentum": 0.5}
    learner = make_learner(**settings)
    reference = copy.deepcopy(learner.model)
    optimizer = torch.optim.RMSprop(reference.parameters(), lr=3e-3, alpha=0.9, eps=0.05,
                                    momentum=0.5)
    for seed in range(3):  # momentum and the square average carry over between steps
        batch = hand_made_batch(seed=seed)
        learner.update(batch)
        optimizer.zero_grad()
        sum(reference_loss(reference, batch, learner.lcfg, range(3)).values()).backward()
        optimizer.step()
    for (name, p), q in zip(learner.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    assert learner.updates == 3 and learner.frames == 3 * 4 * 3


def test_the_learning_rate_decays_with_the_frames_consumed():
    learner = make_learner(lr=1e-2, lr_decay=True)
    learner.cfg = learner.cfg.model_copy(update={"run": learner.cfg.run.model_copy(
        update={"total_frames": 48})})
    lrs = [learner.update(hand_made_batch(seed=s))["learner/lr"] for s in range(5)]
    # 12 frames per update of 48: lr * (1 - 12k/48), floored at zero.
    assert lrs == pytest.approx([7.5e-3, 5e-3, 2.5e-3, 0.0, 0.0])


def test_resume_restores_the_run_of_skipped_updates():
    learner = make_learner(max_nonfinite_run=3)
    state = learner.state_dict()
    state["counters"].update(nonfinite_total=5, nonfinite_run=2)
    learner.load_state_dict(state)
    assert (learner.nonfinite.total, learner.nonfinite.run) == (5, 2)
