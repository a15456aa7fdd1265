"""learner/learner.py on CPU with fake time-major batches: exact resume, non-finite skipping,
named loss metrics, collate, per-task heads."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from accord.config import config_from_dict
from learner.checkpoint import load_checkpoint, save_checkpoint
from envs import EnvSpec
from learner.algorithm import NonFiniteLossError
from learner.impala.learner import ImpalaLearner as Learner, collate

T, M, OBS, A = 5, 3, (4,), 2


def make_cfg(tasks=("CartPole-v1",), **learner) -> object:
    return config_from_dict({
        "env": {"kind": "gym", "tasks": list(tasks), "envs_per_actor": M},
        "actors": {"num_actors": len(tasks), "unroll_length": T},
        "learner": {"model": "mlp", "batch_size": M, **learner},
        "run": {"total_frames": 10_000},
    })


def fake_unroll(seed: int, task_id: int = 0, version: int = 0, episodes: int = 0) -> dict:
    """One unroll in the format of `RolloutWorker.unroll`."""
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((T + 1, M, *OBS)).astype(np.float32),
        "actions": rng.integers(0, A, (T, M)).astype(np.int64),
        "rewards": rng.standard_normal((T, M)).astype(np.float32),
        "terminated": rng.random((T, M)) < 0.1,
        "truncated": rng.random((T, M)) < 0.05,
        "behaviour_logits": rng.standard_normal((T, M, A)).astype(np.float32),
        "task_id": np.full(M, task_id, dtype=np.int64),
        "version": version,
        "episodes": np.tile([task_id, 10.0 + seed, 7.0, np.nan], (episodes, 1)).reshape(-1, 4),
    }


def fake_batch(seed: int, task_id: int = 0) -> dict:
    return collate([fake_unroll(seed, task_id)])


def new_learner(cfg, seed: int) -> Learner:
    torch.manual_seed(seed)
    return Learner(cfg, EnvSpec(OBS, np.dtype(np.float32), num_actions=A), device="cpu")


def params(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


def assert_same_tree(a, b, where="state"):
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --- resume -------------------------------------------------------------------------------------


def test_resume_from_a_checkpoint_on_disk_is_bit_identical(tmp_path):
    cfg = make_cfg()
    batches = [fake_batch(s) for s in range(5)]

    first = new_learner(cfg, seed=0)
    for b in batches[:3]:
        first.update(b)
    path = save_checkpoint(tmp_path, first.state_dict(), step=first.updates)
    torch_rng = torch.get_rng_state()
    np_draw, py_draw = np.random.random(), random.random()
    for b in batches[3:]:
        first.update(b)
    expected = first.state_dict()

    torch.manual_seed(123)  # scramble the global RNGs the checkpoint must restore
    np.random.seed(123)
    random.seed(123)
    second = new_learner(cfg, seed=99)
    assert not torch.equal(second.model.heads[0].weight, first.model.heads[0].weight)
    second.load_state_dict(load_checkpoint(path))
    assert second.updates == 3 and second.frames == 3 * T * M
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert (np.random.random(), random.random()) == (np_draw, py_draw)
    for b in batches[3:]:
        second.update(b)
    got = second.state_dict()

    assert_same_tree(expected["model"], got["model"], "model")
    assert_same_tree(expected["optimizer"], got["optimizer"], "optimizer")
    assert expected["counters"] == got["counters"]
    assert got["counters"]["updates"] == 5


def test_learning_rate_anneals_with_frames_and_survives_resume():
    cfg = make_cfg()
    learner = new_learner(cfg, seed=0)
    lrs = [learner.update(fake_batch(s))["learner/lr"] for s in range(3)]
    per_update = T * M / cfg.run.total_frames
    assert lrs == pytest.approx([cfg.learner.lr * (1 - k * per_update) for k in (1, 2, 3)])
    resumed = new_learner(cfg, seed=1)
    resumed.load_state_dict(learner.state_dict())
    assert resumed.update(fake_batch(3))["learner/lr"] == pytest.approx(cfg.learner.lr * (1 - 4 * per_update))


def test_resume_restores_the_cached_gaussian_draws():
    learner = new_learner(make_cfg(), seed=0)
    np.random.seed(0)
    random.seed(0)
    np.random.standard_normal()  # leaves the pair's second value cached
    random.gauss(0.0, 1.0)
    state = learner.state_dict()
    expected = (np.random.standard_normal(), random.gauss(0.0, 1.0))
    learner.load_state_dict(state)
    assert (np.random.standard_normal(), random.gauss(0.0, 1.0)) == expected


# --- one update ---------------------------------------------------------------------------------


def test_update_changes_weights_and_returns_named_loss_terms():
    learner = new_learner(make_cfg(), seed=0)
    before = params(learner)
    metrics = learner.update(fake_batch(0))
    for key in ("loss/main/pg", "loss/main/baseline", "loss/main/entropy", "loss/total",
                "learner/grad_norm", "learner/lr", "learner/nonfinite_total"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["loss/total"] == pytest.approx(
        metrics["loss/main/pg"] + metrics["loss/main/baseline"] + metrics["loss/main/entropy"], rel=1e-5)
    assert metrics["loss/main/baseline"] >= 0.0
    assert metrics["loss/main/entropy"] < 0.0  # minus a positive entropy bonus
    after = params(learner)
    assert all(not torch.equal(before[k], after[k]) for k in before), "every tensor gets a gradient"
    assert learner.updates == 1
    assert learner.frames == T * M * 1  # gym: one frame per agent step


def test_update_clips_the_gradient_norm():
    learner = new_learner(make_cfg(max_grad_norm=1e-3, lr_decay=False), seed=0)
    batch = fake_batch(0)
    batch["rewards"] = batch["rewards"] * 1000
    metrics = learner.update(batch)
    clipped = torch.cat([p.grad.flatten() for p in learner.model.parameters()]).norm()
    assert metrics["learner/grad_norm"] > 1e-3  # reported before clipping
    assert float(clipped) == pytest.approx(1e-3, rel=1e-3)


# --- non-finite losses --------------------------------------------------------------------------


def nan_batch(seed: int) -> dict:
    batch = fake_batch(seed)
    batch["rewards"][1, 0] = np.nan
    return batch


def test_nan_reward_skips_the_step_and_counts_it():
    learner = new_learner(make_cfg(max_nonfinite_run=3), seed=0)
    learner.update(fake_batch(0))
    before = params(learner)
    opt_before = {k: v.clone() for k, v in learner.optimizer.state[learner.model.heads[0].weight].items()}
    metrics = learner.update(nan_batch(1))
    assert metrics["learner/nonfinite_total"] == 1.0
    assert "loss/total" not in metrics
    assert learner.nonfinite.total == 1 and learner.nonfinite.run == 1
    assert learner.updates == 1
    after = params(learner)
    assert all(torch.equal(before[k], after[k]) for k in before)
    for k, v in learner.optimizer.state[learner.model.heads[0].weight].items():
        assert torch.equal(v, opt_before[k]), k


def test_a_run_of_nonfinite_losses_stops_training_and_a_finite_one_resets_it():
    learner = new_learner(make_cfg(max_nonfinite_run=3), seed=0)
    learner.update(nan_batch(0))
    learner.update(nan_batch(1))
    assert learner.nonfinite.run == 2
    learner.update(fake_batch(2))  # finite: the run starts over
    assert learner.nonfinite.run == 0 and learner.nonfinite_total == 2
    learner.update(nan_batch(3))
    learner.update(nan_batch(4))
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive non-finite updates \(last: loss nan\).*learner\.lr"):
        learner.update(nan_batch(5))
    assert learner.nonfinite_total == 5
    assert learner.updates == 1


# --- collate ------------------------------------------------------------------------------------


def test_collate_concatenates_along_the_batch_axis():
    a = fake_unroll(0, task_id=0, version=4, episodes=1)
    b = fake_unroll(1, task_id=1, version=6, episodes=2)
    batch = collate([a, b])
    assert batch["obs"].shape == (T + 1, 2 * M, *OBS)
    assert batch["behaviour_logits"].shape == (T, 2 * M, A)
    for key in ("obs", "actions", "rewards", "terminated", "truncated", "behaviour_logits"):
        np.testing.assert_array_equal(batch[key][:, :M], a[key])
        np.testing.assert_array_equal(batch[key][:, M:], b[key])
        assert batch[key].dtype == a[key].dtype
    np.testing.assert_array_equal(batch["task_id"], [0] * M + [1] * M)
    assert batch["versions"].tolist() == [4, 6] and batch["versions"].dtype == np.int64
    assert batch["episodes"].shape == (3, 4)
    np.testing.assert_array_equal(batch["episodes"][:, 0], [0, 1, 1])


def test_collate_of_unrolls_without_episodes():
    batch = collate([fake_unroll(0), fake_unroll(1)])
    assert batch["episodes"].shape == (0, 4)


# --- per-task heads -----------------------------------------------------------------------------


def head_params(learner: Learner, head: int) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.heads[head].parameters()]


def test_batch_of_one_task_leaves_the_other_head_unchanged():
    cfg = make_cfg(tasks=("CartPole-v1", "Acrobot-v1"), per_task_heads=True)
    learner = new_learner(cfg, seed=0)
    assert len(learner.model.heads) == 2
    head0, head1 = head_params(learner, 0), head_params(learner, 1)
    torso = [p.detach().clone() for p in learner.model.torso.parameters()]
    learner.update(fake_batch(0, task_id=0))
    # Head 1 is evaluated in the forward pass (then not gathered), so it gets an all-zero
    # gradient rather than none; RMSProp without momentum then moves it by exactly zero.
    for p in learner.model.heads[1].parameters():
        assert p.grad is not None and not p.grad.any()
    assert all(torch.equal(x, y) for x, y in zip(head1, head_params(learner, 1)))
    assert not any(torch.equal(x, y) for x, y in zip(head0, head_params(learner, 0)))
    assert not any(torch.equal(x, p) for x, p in zip(torso, learner.model.torso.parameters()))


def test_with_momentum_an_idle_head_keeps_moving():
    cfg = make_cfg(tasks=("CartPole-v1", "Acrobot-v1"), per_task_heads=True, rmsprop_momentum=0.9)
    learner = new_learner(cfg, seed=0)
    learner.update(fake_batch(0, task_id=1))
    head1 = head_params(learner, 1)
    learner.update(fake_batch(1, task_id=0))
    for p in learner.model.heads[1].parameters():
        assert not p.grad.any()
    # The momentum buffer from the earlier task-1 step still applies.
    assert not any(torch.equal(x, y) for x, y in zip(head1, head_params(learner, 1)))


def test_mixed_batch_routes_each_column_to_its_task_head():
    cfg = make_cfg(tasks=("CartPole-v1", "Acrobot-v1"), per_task_heads=True)
    learner = new_learner(cfg, seed=0)
    batch = collate([fake_unroll(0, task_id=0), fake_unroll(1, task_id=1)])
    learner.update(batch)
    for head in learner.model.heads:
        assert all(p.grad is not None and p.grad.any() for p in head.parameters())


def test_a_nonfinite_gradient_with_a_finite_loss_skips_the_step(monkeypatch):
    learner = new_learner(make_cfg(), seed=0)
    before = [p.detach().clone() for p in learner.model.parameters()]
    # An overflow in backward: the loss is finite, the gradient norm is not.
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(float("inf")))
    metrics = learner.update(fake_batch(0))
    assert learner.nonfinite_total == 1 and learner.updates == 0
    assert metrics["learner/nonfinite_total"] == 1.0
    for p, q in zip(before, learner.model.parameters()):
        assert torch.equal(p, q)
