"""SAC networks: the tanh-Gaussian log-density, D-Grad (A)'s layer, heads and the parameter split."""
import math

import pytest
import torch

from models.sac import (LOG_STD_MAX, LOG_STD_MIN, SacActor, TaskLinear, build_sac_actor,
                        build_sac_critic)

MODELS = ["mtsac", "multihead", "dgrad_a"]


def test_log_prob_is_the_change_of_variables_of_the_gaussian():
    torch.manual_seed(0)
    actor = build_sac_actor("mtsac", 5, 3, 1, (16, 16)).double()
    obs = torch.randn(6, 5, dtype=torch.float64)
    eps = torch.randn(6, 3, dtype=torch.float64)
    action, log_prob = actor.sample(obs, torch.zeros(6, dtype=torch.long), eps)
    mean, log_std = actor(obs, torch.zeros(6, dtype=torch.long))
    # Density of a = tanh(u), u ~ N(μ, σ²): p(a) = N(u) / |da/du|, da/du = 1 − tanh(u)², per dim.
    for row in range(6):
        expected = 0.0
        for d in range(3):
            mu, sigma = mean[row, d].item(), math.exp(log_std[row, d].item())
            u = mu + sigma * eps[row, d].item()
            normal = -0.5 * ((u - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
            expected += normal - math.log(1.0 - math.tanh(u) ** 2)
            assert action[row, d].item() == pytest.approx(math.tanh(u), abs=1e-12)
        assert log_prob[row].item() == pytest.approx(expected, abs=1e-9)


def test_log_std_is_bounded_and_actions_lie_in_the_box():
    actor = build_sac_actor("mtsac", 4, 2, 1, (8,))
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(1e3)                               # drive the raw outputs far out
    obs = torch.randn(32, 4) * 10
    task = torch.zeros(32, dtype=torch.long)
    _, log_std = actor(obs, task)
    assert log_std.min() >= LOG_STD_MIN and log_std.max() <= LOG_STD_MAX
    with torch.inference_mode():
        for deterministic in (True, False):
            a = actor.act(obs, task, deterministic)
            assert a.shape == (32, 2) and a.abs().max() <= 1.0


def test_act_is_tanh_of_the_mean_or_a_reproducible_sample():
    torch.manual_seed(1)
    actor = build_sac_actor("multihead", 4, 2, 3, (8,))
    obs, task = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    mean, _ = actor(obs, task)
    assert torch.equal(actor.act(obs, task, True), torch.tanh(mean))
    draws = [actor.act(obs, task, False, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], torch.tanh(mean))


def test_dgrad_layer_is_M_of_z_times_x_plus_beta_of_z():
    torch.manual_seed(2)
    layer = TaskLinear(4, 4, num_tasks=3)
    x, task = torch.randn(6, 4), torch.tensor([2, 0, 1, 1, 2, 0])
    per_row = layer(x, task)
    for i in range(6):
        k = int(task[i])
        M, beta = layer.weight[k].detach(), layer.bias[k].detach()
        by_hand = [sum(M[r, c].item() * x[i, c].item() for c in range(4)) + beta[r].item()
                   for r in range(4)]
        assert per_row[i].tolist() == pytest.approx(by_hand, abs=1e-6)
        # One id for all rows (the learner's vmapped path) gives the same map.
        assert layer(x[i:i + 1], torch.tensor(k))[0].tolist() == pytest.approx(by_hand, abs=1e-6)


def test_dgrad_network_applies_the_task_layer_after_each_hidden_activation():
    torch.manual_seed(3)
    actor = build_sac_actor("dgrad_a", 5, 2, 3, (6, 7))
    net = actor.net
    obs, k = torch.randn(4, 5), 1
    h = obs
    for fc, dgrad in zip(net.layers, net.dgrad):
        h = torch.relu(h @ fc.weight.T + fc.bias)
        h = h @ dgrad.weight[k].T + dgrad.bias[k]          # M_l(z) h + β_l(z)
    out = h @ net.out.weight.T + net.out.bias
    assert torch.allclose(net(obs, torch.full((4,), k)), out, atol=1e-6)


def test_multihead_picks_the_rows_task_head():
    torch.manual_seed(4)
    critic = build_sac_critic("multihead", 5, 2, 3, (8,))
    obs, act = torch.randn(3, 5), torch.rand(3, 2)
    q1, _ = critic(obs, act, torch.tensor([0, 1, 2]))
    h = torch.relu(critic.q1.layers[0](torch.cat([obs, act], -1)))
    for i in range(3):
        head = critic.q1.out
        assert q1[i].item() == pytest.approx((h[i] @ head.weight[i][0] + head.bias[i][0]).item(),
                                             abs=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_shared_and_task_parameters_partition_the_model(model):
    K = 3
    for net in (build_sac_actor(model, 5, 2, K, (8, 8)), build_sac_critic(model, 5, 2, K, (8, 8))):
        shared = {id(p) for p in net.shared_parameters()}
        heads = net.task_parameters()
        task = [{id(p) for p in ps} for ps in heads]
        everything = {id(p) for p in net.parameters()}
        assert len(heads) == (0 if model == "mtsac" else K)
        assert all(not (shared & t) for t in task)
        assert all(not (a & b) for i, a in enumerate(task) for b in task[i + 1:])
        assert shared.union(*task) == everything
        if model == "dgrad_a":   # each task owns (M, β) per hidden layer, per Q network
            networks = 1 if isinstance(net, SacActor) else 2
            assert all(len(ps) == 2 * 2 * networks for ps in heads)


def test_unknown_model_or_bad_sizes_are_named():
    with pytest.raises(ValueError, match="unknown SAC model 'film'"):
        build_sac_actor("film", 5, 2, 3, (8,))
    with pytest.raises(ValueError, match="hidden"):
        build_sac_critic("mtsac", 5, 2, 3, ())
