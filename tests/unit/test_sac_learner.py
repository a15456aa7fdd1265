"""The SAC learner step against per-task references written from the SAC equations: loss values,
the combined (PCGrad) shared gradients, per-task heads, α, Polyak targets and exact resume."""
import copy
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from accord.config import config_from_dict
from combiners import flatten
from envs import EnvSpec
from learner.algorithm import NonFiniteLossError
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.sac.learner import SacLearner
from models.sac import build_sac_actor

K, N, D, A = 3, 4, 7, 2
GAMMA, SCALE = 0.9, 2.0
ALPHAS = [0.5, 0.05, 2.0]
SPEC = EnvSpec((D,), np.dtype(np.float32), action_dim=A)


def _cfg(model="mtsac", combiner="sum", **sac):
    return config_from_dict({
        "env": {"kind": "gym", "tasks": [f"t{k}" for k in range(K)], "envs_per_actor": 2},
        "actors": {"num_actors": K},
        "learner": {"model": "mlp", "algorithm": "sac", "discount": GAMMA, "max_nonfinite_run": 3,
                    "combiner": {"name": combiner,
                                 "options": {"seed": 0} if combiner == "pcgrad" else {}},
                    "sac": {"model": model, "hidden": [16, 16], "reward_scale": SCALE,
                            "actor_lr": 1e-3, "critic_lr": 1e-3, "alpha_lr": 1e-3, **sac}},
    })


def _learner(model="mtsac", combiner="sum", seed=0, **sac):
    torch.manual_seed(seed)
    learner = SacLearner(_cfg(model, combiner, **sac), SPEC)
    with torch.no_grad():
        learner.log_alpha.copy_(torch.tensor(ALPHAS).log())
    return learner


def _batch(seed=0, n=N):
    rng = np.random.default_rng(seed)
    terminated = rng.random((K, n)) < 0.3
    terminated[:, 0] = True
    return {"obs": rng.normal(size=(K, n, D)).astype(np.float32),
            "action": rng.uniform(-1, 1, (K, n, A)).astype(np.float32),
            "reward": rng.normal(size=(K, n)).astype(np.float32),
            "next_obs": rng.normal(size=(K, n, D)).astype(np.float32),
            "terminated": terminated, "truncated": ~terminated,
            "versions": np.zeros(K * n, np.int64), "episodes": np.zeros((0, 4)), "inserted": 1000}


def _noise(seed, n=N):
    """The learner draws a′'s noise, then ã's, from the torch RNG at the start of update."""
    torch.manual_seed(seed)
    return torch.randn(K, n, A), torch.randn(K, n, A)


def _sample_row(actor, obs, k, eps):
    """a = tanh(u), u = μ + σ ε, and log π(a|s) by the change of variables, for one row."""
    mean, log_std = actor(obs[None], torch.tensor([k]))
    u = mean[0] + log_std[0].exp() * eps
    log_prob = (Normal(mean[0], log_std[0].exp()).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2))
    return torch.tanh(u), log_prob.sum()


def _reference_critic_losses(actor, critic, target, b, noise_next):
    """J_Q,k = Σ_i mean_rows (Q_i(s, a) − y)², one row at a time."""
    losses = []
    for k in range(K):
        total = 0.0
        for i in range(N):
            obs, nxt = torch.from_numpy(b["obs"][k, i]), torch.from_numpy(b["next_obs"][k, i])
            with torch.no_grad():
                a2, logp2 = _sample_row(actor, nxt, k, noise_next[k, i])
                tq1, tq2 = target(nxt[None], a2[None], torch.tensor([k]))
                y = SCALE * float(b["reward"][k, i]) + GAMMA * (1 - float(b["terminated"][k, i])) * (
                    torch.minimum(tq1, tq2)[0] - ALPHAS[k] * logp2)
            q1, q2 = critic(obs[None], torch.from_numpy(b["action"][k, i])[None], torch.tensor([k]))
            total = total + ((q1[0] - y) ** 2 + (q2[0] - y) ** 2) / N
        losses.append(total)
    return losses


def _reference_actor_losses(actor, critic, b, noise_pi):
    """J_π,k = mean_rows (α_k log π(ã|s) − min_j Q_j(s, ã)), and log π per row."""
    losses, log_probs = [], []
    for k in range(K):
        total, row_logp = 0.0, []
        for i in range(N):
            obs = torch.from_numpy(b["obs"][k, i])
            a, logp = _sample_row(actor, obs, k, noise_pi[k, i])
            q1, q2 = critic(obs[None], a[None], torch.tensor([k]))
            total = total + (ALPHAS[k] * logp - torch.minimum(q1, q2)[0]) / N
            row_logp.append(logp.item())
        losses.append(total)
        log_probs.append(row_logp)
    return losses, log_probs


@pytest.mark.parametrize("model", ["mtsac", "dgrad_a"])
def test_reported_losses_equal_the_per_row_sac_equations(model):
    learner = _learner(model)
    before = copy.deepcopy(learner)
    b = _batch(1)
    noise_next, noise_pi = _noise(5)
    torch.manual_seed(5)
    metrics = learner.update(b)
    critic_ref = _reference_critic_losses(before.actor, before.critic, before.critic_target, b,
                                          noise_next)
    # The actor step sees the critics after their own step.
    actor_ref, log_probs = _reference_actor_losses(before.actor, learner.critic, b, noise_pi)
    for k in range(K):
        assert metrics[f"loss/critic/t{k}"] == pytest.approx(critic_ref[k].item(), rel=1e-5)
        assert metrics[f"loss/actor/t{k}"] == pytest.approx(actor_ref[k].item(), rel=1e-5, abs=1e-6)
        alpha_ref = -np.mean([math.log(ALPHAS[k]) * (lp - A) for lp in log_probs[k]])
        assert metrics[f"loss/alpha/t{k}"] == pytest.approx(alpha_ref, rel=1e-5)
        assert metrics[f"sac/entropy/t{k}"] == pytest.approx(-np.mean(log_probs[k]), rel=1e-5)
        assert metrics[f"sac/alpha/t{k}"] == pytest.approx(ALPHAS[k], rel=1e-6)


def _capture_grads(optimizer, store: list):
    """Record every `.grad` just before the optimizer applies it."""
    step = optimizer.step

    def recording_step(*args, **kwargs):
        store.append([p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]])
        return step(*args, **kwargs)
    optimizer.step = recording_step


def _pcgrad_brute_force(grads, orders):
    total = torch.zeros_like(grads[0])
    for i, g_i in enumerate(grads):
        g = g_i.clone()
        for j in orders[i]:
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g = g - dot / torch.dot(grads[j], grads[j]) * grads[j]
        total += g
    return total


@pytest.mark.parametrize("model", ["mtsac", "multihead", "dgrad_a"])
def test_pcgrad_shared_gradient_and_heads_match_a_per_task_loop(model):
    learner = _learner(model, "pcgrad", seed=2)
    before = copy.deepcopy(learner)
    critic_grads, actor_grads = [], []
    _capture_grads(learner.critic_optimizer, critic_grads)
    _capture_grads(learner.actor_optimizer, actor_grads)
    b = _batch(2)
    noise_next, noise_pi = _noise(9)
    torch.manual_seed(9)
    metrics = learner.update(b)
    assert metrics["combiner/critic/pcgrad/conflicts"] > 0      # projections were exercised

    critic_losses = _reference_critic_losses(before.actor, before.critic, before.critic_target,
                                             b, noise_next)
    actor_losses, _ = _reference_actor_losses(before.actor, learner.critic, b, noise_pi)
    cases = [(before.critic, critic_losses, critic_grads[0], learner.critic_combiner),
             (before.actor, actor_losses, actor_grads[0], learner.actor_combiner)]
    for net, losses, captured, combiner in cases:
        index = {id(p): i for i, p in enumerate(net.parameters())}
        shared = net.shared_parameters()
        per_task = [flatten(torch.autograd.grad(losses[k], shared, retain_graph=True,
                                                allow_unused=True), like=shared)
                    for k in range(K)]
        expected = _pcgrad_brute_force(per_task, combiner.last_orders)
        got = flatten([captured[index[id(p)]] for p in shared])
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
        for k, head in enumerate(net.task_parameters()):   # each head: its own task's gradient
            own = torch.autograd.grad(losses[k], head, retain_graph=True)
            for p, g in zip(head, own):
                assert torch.allclose(captured[index[id(p)]], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model", ["mtsac", "multihead", "dgrad_a"])
@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_one_update_changes_every_network_and_counts(model, combiner):
    learner = _learner(model, combiner)
    before = copy.deepcopy(learner)
    metrics = learner.update(_batch(3))
    assert learner.updates == 1 and learner.frames == 1000
    for name in ("actor", "critic", "critic_target"):
        old = dict(getattr(before, name).named_parameters())
        for n, p in getattr(learner, name).named_parameters():
            assert not torch.equal(p, old[n]), f"{name}.{n} did not move"
    assert not torch.equal(learner.log_alpha, before.log_alpha)
    assert metrics["learner/nonfinite_total"] == 0
    assert {"sac/q_mean", "learner/grad_norm/critic", "learner/grad_norm/actor"} <= set(metrics)


def test_target_critics_move_by_tau():
    tau = 0.3
    learner = _learner(tau=tau)
    target_before = [p.clone() for p in learner.critic_target.parameters()]
    learner.update(_batch(4))
    for old, new, online in zip(target_before, learner.critic_target.parameters(),
                                learner.critic.parameters()):
        assert torch.allclose(new, old + tau * (online - old), atol=1e-7)
        assert not torch.allclose(new, online)


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path):
    learner = _learner("multihead", "pcgrad")
    learner.update(_batch(5))
    path = save_checkpoint(tmp_path, learner.state_dict(), step=1)
    learner.update(_batch(6))
    continued = learner.state_dict()

    fresh = _learner("multihead", "pcgrad", seed=123)
    torch.manual_seed(999)                      # the checkpoint must restore the RNG as well
    fresh.load_state_dict(load_checkpoint(path))
    fresh.update(_batch(6))
    resumed = fresh.state_dict()
    for key in ("actor", "critic", "critic_target"):
        for name, value in continued[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}.{name}"
    assert torch.equal(resumed["log_alpha"], continued["log_alpha"])
    assert resumed["counters"] == continued["counters"]
    assert torch.equal(resumed["combiners"]["critic"]["rng"], continued["combiners"]["critic"]["rng"])


def test_nonfinite_loss_skips_the_step_and_a_run_of_them_stops():
    learner = _learner()
    before = copy.deepcopy(learner)
    bad = _batch(7)
    bad["reward"][1, 2] = np.nan
    metrics = learner.update(bad)
    assert metrics["learner/nonfinite_total"] == 1 and learner.updates == 0
    for p, q in zip(learner.critic.parameters(), before.critic.parameters()):
        assert torch.equal(p, q)
    learner.update(_batch(8))                      # a finite step resets the run
    assert learner.updates == 1 and learner.nonfinite.run == 0
    learner.update(bad)
    learner.update(bad)
    with pytest.raises(NonFiniteLossError):
        learner.update(bad)
    assert learner.nonfinite_total == 4


def test_bad_batches_and_specs_are_named():
    learner = _learner()
    b = _batch(0)
    b["obs"] = b["obs"][:2]
    with pytest.raises(ValueError, match="task-major"):
        learner.update(b)
    b = _batch(0)
    del b["next_obs"]
    with pytest.raises(ValueError, match="next_obs"):
        learner.update(b)
    with pytest.raises(ValueError, match="continuous"):
        SacLearner(_cfg(), EnvSpec((D,), np.dtype(np.float32), num_actions=3))


def test_actor_weights_load_into_a_rollout_actor():
    learner = _learner("dgrad_a")
    learner.update(_batch(1))
    actor = build_sac_actor("dgrad_a", D, A, K, (16, 16))
    actor.load_state_dict({k: torch.from_numpy(v) for k, v in learner.actor_weights().items()})
    obs, task = torch.randn(5, D), torch.tensor([0, 2, 1, 1, 0])
    with torch.inference_mode():
        assert torch.equal(actor.act(obs, task, True), learner.actor.act(obs, task, True))
