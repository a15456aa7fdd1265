"""The SAC learner's settings and bookkeeping: each optimizer's learning rate, the initial
temperature and entropy target, the reported Q mean, the non-finite skips of the actor and α
steps, and the counters a checkpoint restores."""
import copy
import math

import numpy as np
import pytest
import torch

from envs import EnvSpec
from learner.algorithm import NonFiniteLossError
from learner.sac.learner import SacLearner
from tests.unit.test_sac_learner import A, D, K, _batch, _cfg, _learner

SPEC_ONE = EnvSpec((D,), np.dtype(np.float32), action_dim=A)


def _moves(before, after):
    return max((p - q).abs().max().item() for p, q in zip(after.parameters(), before.parameters()))


def test_each_optimizer_takes_its_own_learning_rate():
    """Adam's first step moves every parameter with a gradient by its lr (|m̂ / √v̂| = 1)."""
    learner = _learner(critic_lr=0.02, actor_lr=0.005, alpha_lr=0.03)
    before = copy.deepcopy(learner)
    metrics = learner.update(_batch(1))
    assert _moves(before.critic, learner.critic) == pytest.approx(0.02, rel=1e-3)
    assert _moves(before.actor, learner.actor) == pytest.approx(0.005, rel=1e-3)
    assert (learner.log_alpha - before.log_alpha).abs().tolist() == pytest.approx([0.03] * K,
                                                                                 rel=1e-3)
    assert not any(p.requires_grad for p in learner.critic_target.parameters())
    for net in ("critic", "actor"):     # the norm of the gradient the step applied
        grads = [p.grad.flatten() for p in getattr(learner, net).parameters()]
        assert metrics[f"learner/grad_norm/{net}"] == pytest.approx(
            torch.linalg.vector_norm(torch.cat(grads)).item(), rel=1e-5)


def test_a_nonfinite_critic_step_names_the_critic():
    learner = _learner()
    learner.nonfinite.max_run = 1
    bad = _batch(7)
    bad["reward"][0, 1] = np.nan
    with pytest.raises(NonFiniteLossError, match=r"\(last: critic losses \[nan, "):
        learner.update(bad)


def test_initial_temperature_and_an_explicit_entropy_target():
    h_bar = -0.5
    torch.manual_seed(0)
    learner = SacLearner(_cfg(init_alpha=0.2, target_entropy=h_bar), SPEC_ONE)
    assert learner.target_entropy == h_bar
    metrics = learner.update(_batch(2))
    for k in range(K):
        assert metrics[f"sac/alpha/t{k}"] == pytest.approx(0.2, rel=1e-6)
        # J(α_k) = −log α_k (mean log π + H̄), mean log π = −entropy
        expected = -math.log(0.2) * (-metrics[f"sac/entropy/t{k}"] + h_bar)
        assert metrics[f"loss/alpha/t{k}"] == pytest.approx(expected, rel=1e-5)



def test_q_mean_is_the_mean_of_both_critics_over_all_rows():
    learner = _learner()
    before = copy.deepcopy(learner)
    b = _batch(3)
    metrics = learner.update(b)
    with torch.no_grad():
        q1, q2 = torch.func.vmap(before.critic)(torch.from_numpy(b["obs"]),
                                                torch.from_numpy(b["action"]), torch.arange(K))
    assert metrics["sac/q_mean"] == pytest.approx(0.5 * (q1.mean() + q2.mean()).item(), rel=1e-5)


def test_a_batch_of_one_row_per_task_is_enough():
    learner = _learner("multihead", "pcgrad")
    metrics = learner.update(_batch(4, n=1))
    learner.update(_batch(5, n=1))
    assert learner.updates == 2
    assert {"combiner/critic/pcgrad/conflicts", "combiner/actor/pcgrad/conflicts"} <= set(metrics)


def test_a_nonfinite_actor_step_keeps_the_critic_step_and_skips_the_rest():
    """A critic lr of 1e37 makes the updated critics overflow: J_Q was finite, J_π is not."""
    learner = _learner(critic_lr=1e37)
    before = copy.deepcopy(learner)
    stopping = copy.deepcopy(learner)
    metrics = learner.update(_batch(5))
    assert metrics["learner/nonfinite_total"] == 1 and "loss/critic/t0" in metrics
    stopping.nonfinite.max_run = 1
    with pytest.raises(NonFiniteLossError, match=r"\(last: actor losses \[.*\], gradient"):
        stopping.update(_batch(5))
    assert _moves(before.critic, learner.critic) > 1e30             # the critic step stays
    assert _moves(before.actor, learner.actor) == 0
    assert _moves(before.critic_target, learner.critic_target) == 0
    assert torch.equal(learner.log_alpha, before.log_alpha)
    assert learner.updates == 0 and learner.nonfinite_total == 1
    # Skipped through Adam's found-inf flag: its moments and step count did not move either.
    assert all(float(st["step"]) == 0 and not st["exp_avg"].any()
               for st in learner.actor_optimizer.state.values())
    assert not any(k.startswith(("loss/actor/", "learner/grad_norm/actor")) for k in metrics)


def test_a_nonfinite_alpha_step_keeps_the_critic_and_actor_steps():
    """An entropy target beyond float32 makes every J(α_k) and its gradient infinite."""
    learner = _learner(target_entropy=1e39)
    before = copy.deepcopy(learner)
    metrics = learner.update(_batch(6))
    assert metrics["learner/nonfinite_total"] == 1 and learner.nonfinite.run == 1
    # A skipped part's values stay out of the averages (they would poison them); the count
    # and the stopping message carry them.
    assert not any(k.startswith("loss/alpha/") for k in metrics)
    assert _moves(before.critic, learner.critic) > 0 and _moves(before.actor, learner.actor) > 0
    assert torch.equal(learner.log_alpha, before.log_alpha)
    assert all(float(st["step"]) == 0 for st in learner.alpha_optimizer.state.values())
    assert _moves(before.critic_target, learner.critic_target) == 0 and learner.updates == 0
    learner.nonfinite.max_run = 2
    with pytest.raises(NonFiniteLossError, match=r"\(last: alpha losses \[inf"):
        learner.update(_batch(6))


def test_a_checkpoint_restores_every_counter():
    learner = _learner()
    state = learner.state_dict()
    assert state["counters"] == {"updates": 0, "frames": 0, "nonfinite_total": 0,
                                 "nonfinite_run": 0}
    state["counters"] = {"updates": 7, "frames": 1234, "nonfinite_total": 5, "nonfinite_run": 2}
    fresh = _learner()
    fresh.load_state_dict(state)
    assert (fresh.updates, fresh.frames) == (7, 1234)
    assert (fresh.nonfinite.total, fresh.nonfinite.run) == (5, 2)
    assert fresh.state_dict()["counters"] == state["counters"]


def test_bad_specs_and_batches_are_named_in_full():
    with pytest.raises(ValueError, match=r"^learner.algorithm 'sac' needs continuous \(Box\) "
                                         r"actions; the env has 3 discrete actions$"):
        SacLearner(_cfg(), EnvSpec((D,), np.dtype(np.float32), num_actions=3))
    with pytest.raises(ValueError, match=r"^SAC's networks read vector observations; got shape "
                                         r"\(2, 3\)$"):
        SacLearner(_cfg(), EnvSpec((2, 3), np.dtype(np.float32), action_dim=A))
    learner = _learner()
    b = _batch(0)
    del b["inserted"]
    with pytest.raises(ValueError, match=r"^SAC batch lacks \['inserted'\]; it has \['action'"):
        learner.update(b)
    b = _batch(0)
    b["reward"] = b["reward"][:, 0]
    with pytest.raises(ValueError, match=r"^SAC batch must be task-major \[K=3, n, \.\.\.\] with "
                                         r"obs dim 7 and action dim 2; got shapes \{'obs': "
                                         r"\(3, 4, 7\), "):
        learner.update(b)
    b = {k: v[:, :0] if k in ("obs", "action", "reward", "next_obs", "terminated", "truncated")
         else v for k, v in _batch(0).items()}                     # no rows at all
    with pytest.raises(ValueError, match=r"got shapes \{'reward': \(3, 0\)\}$"):
        learner.update(b)


def test_both_combiners_take_the_configured_options():
    cfg = _cfg(combiner="pcgrad")
    combiner = cfg.learner.combiner.model_copy(update={"options": {"seed": 7, "reduction": "mean"}})
    cfg = cfg.model_copy(update={"learner": cfg.learner.model_copy(update={"combiner": combiner})})
    learner = SacLearner(cfg, SPEC_ONE)
    for c in (learner.critic_combiner, learner.actor_combiner):
        assert (c.seed, c.reduction) == (7, "mean")
    assert learner.critic_combiner is not learner.actor_combiner


@pytest.mark.parametrize("model, combiner, heads_in_pass", [
    ("multihead", "pcgrad", True),    # output heads: at most double G[K, ·]
    ("dgrad_a", "pcgrad", False),     # K task networks: K² n² numbers per layer in one pass
    ("dgrad_a", "sum", True),         # fixed weights: one batched forward and backward, no vmap
    ("mtsac", "pcgrad", False),       # no task parameters
])
def test_which_task_parameters_ride_in_the_vmapped_pass(monkeypatch, model, combiner,
                                                        heads_in_pass):
    import learner.sac.learner as sac_learner
    passed, real = [], sac_learner.apply_task_split

    def recording(*args, **kwargs):
        passed.append(args[5])
        return real(*args, **kwargs)
    monkeypatch.setattr(sac_learner, "apply_task_split", recording)
    if combiner == "sum":       # a sum that costs a sum: one batched forward, no vmap at all
        def no_vmap(*args, **kwargs):
            raise AssertionError("vmap used with fixed combiner weights")
        monkeypatch.setattr(torch.func, "vmap", no_vmap)
    learner = _learner(model, combiner)
    before = copy.deepcopy(learner)
    learner.update(_batch(7))
    assert [p is not None for p in passed] == [heads_in_pass] * 2     # critic, actor
    for net in ("critic", "actor"):     # every task parameter still got its gradient
        for ps in getattr(learner, net).task_parameters():
            for p in ps:
                assert p.grad is not None and p.grad.abs().sum() > 0
    assert _moves(before.actor, learner.actor) > 0


@pytest.mark.parametrize("net", ["critic", "actor"])
def test_a_finite_loss_with_an_infinite_gradient_is_skipped(net):
    """A finite J with a non-finite ∇J (here an overflowing hook on one weight) skips the step:
    both must be finite for the optimizer to step."""
    learner = _learner()
    weight = next(getattr(learner, net).parameters())
    weight.register_hook(lambda g: torch.full_like(g, math.inf))
    before = copy.deepcopy(learner)
    learner.nonfinite.max_run = 2
    metrics = learner.update(_batch(8))
    assert metrics["learner/nonfinite_total"] == 1 and learner.updates == 0
    assert f"learner/grad_norm/{net}" not in metrics     # skipped: left out of the averages
    assert _moves(getattr(before, net), getattr(learner, net)) == 0
    with pytest.raises(NonFiniteLossError, match=rf"last: {net} losses \[[^n]*\], gradient norm inf"):
        learner.update(_batch(8))
