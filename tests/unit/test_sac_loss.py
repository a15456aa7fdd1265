"""SAC's loss terms against the equations written out row by row, with a different α per task."""
import math

import pytest
import torch

from learner.sac.loss import actor_loss, alpha_loss, critic_loss, td_target

GAMMA, SCALE, H_BAR = 0.99, 0.1, -4.0
ALPHAS = [0.5, 0.05, 2.0]            # one temperature per task


def _rows(K=3, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(K, n, generator=g, dtype=torch.float64)  # noqa: E731
    terminated = torch.rand(K, n, generator=g) < 0.4
    terminated[:, 0] = True            # every task has both kinds of rows
    terminated[:, 1] = False
    return {"q1": r(), "q2": r(), "reward": r(), "terminated": terminated, "next_q1": r(),
            "next_q2": r(), "next_log_prob": r(), "log_prob": r(), "pi_q1": r(), "pi_q2": r()}


def test_critic_term_is_the_soft_bellman_residual_of_both_critics():
    b = _rows()
    K, n = b["q1"].shape
    for k in range(K):
        alpha = torch.tensor(ALPHAS[k], dtype=torch.float64)
        got = critic_loss(b["q1"][k], b["q2"][k], b["reward"][k], b["terminated"][k],
                          b["next_q1"][k], b["next_q2"][k], b["next_log_prob"][k], alpha,
                          discount=GAMMA, reward_scale=SCALE)
        residual_1 = residual_2 = 0.0
        for i in range(n):
            soft_v = (min(b["next_q1"][k, i].item(), b["next_q2"][k, i].item())
                      - ALPHAS[k] * b["next_log_prob"][k, i].item())
            cont = 0.0 if b["terminated"][k, i] else 1.0
            y = SCALE * b["reward"][k, i].item() + GAMMA * cont * soft_v
            residual_1 += (b["q1"][k, i].item() - y) ** 2 / n
            residual_2 += (b["q2"][k, i].item() - y) ** 2 / n
        assert got["critic"].item() == pytest.approx(residual_1 + residual_2, abs=1e-6)


def test_actor_and_alpha_terms_follow_the_sac_objectives():
    b = _rows(seed=1)
    K, n = b["log_prob"].shape
    for k in range(K):
        alpha = torch.tensor(ALPHAS[k], dtype=torch.float64)
        got = actor_loss(b["log_prob"][k], b["pi_q1"][k], b["pi_q2"][k], alpha)
        expected = sum(ALPHAS[k] * b["log_prob"][k, i].item()
                       - min(b["pi_q1"][k, i].item(), b["pi_q2"][k, i].item())
                       for i in range(n)) / n
        assert got["actor"].item() == pytest.approx(expected, abs=1e-6)
        assert got["stats/entropy"].item() == pytest.approx(
            -sum(b["log_prob"][k].tolist()) / n, abs=1e-9)

        log_alpha = torch.tensor(math.log(ALPHAS[k]), dtype=torch.float64)
        got = alpha_loss(log_alpha, b["log_prob"][k], H_BAR)
        expected = -sum(math.log(ALPHAS[k]) * (b["log_prob"][k, i].item() + H_BAR)
                        for i in range(n)) / n
        assert got["alpha"].item() == pytest.approx(expected, abs=1e-6)


def test_vmapped_over_tasks_each_task_uses_its_own_alpha():
    """The learner evaluates the terms per task under vmap; per-task α must not mix."""
    b = _rows(seed=2)
    alphas = torch.tensor(ALPHAS, dtype=torch.float64)
    batched = torch.func.vmap(
        lambda *a: critic_loss(*a, discount=GAMMA, reward_scale=SCALE)["critic"])(
        b["q1"], b["q2"], b["reward"], b["terminated"], b["next_q1"], b["next_q2"],
        b["next_log_prob"], alphas)
    for k in range(3):
        single = critic_loss(b["q1"][k], b["q2"][k], b["reward"][k], b["terminated"][k],
                             b["next_q1"][k], b["next_q2"][k], b["next_log_prob"][k], alphas[k],
                             discount=GAMMA, reward_scale=SCALE)["critic"]
        assert batched[k].item() == pytest.approx(single.item(), abs=1e-12)


def test_each_term_trains_only_its_own_quantity():
    """y, α and log π are constants where SAC says so (stop-gradients)."""
    b = {k: v[0].clone().requires_grad_(v.dtype == torch.float64) for k, v in _rows(seed=3).items()}
    alpha = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    critic = critic_loss(b["q1"], b["q2"], b["reward"], b["terminated"], b["next_q1"],
                         b["next_q2"], b["next_log_prob"], alpha, discount=GAMMA)["critic"]
    grads = torch.autograd.grad(critic, [b["q1"], b["next_q1"], b["next_q2"], b["next_log_prob"],
                                         b["reward"], alpha], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert all(g is None or not g.any() for g in grads[1:])

    actor = actor_loss(b["log_prob"], b["pi_q1"], b["pi_q2"], alpha)["actor"]
    g_logp, g_alpha = torch.autograd.grad(actor, [b["log_prob"], alpha], allow_unused=True)
    assert g_logp.abs().sum() > 0 and (g_alpha is None or g_alpha == 0)

    log_alpha = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    term = alpha_loss(log_alpha, b["log_prob"], H_BAR)["alpha"]
    g_la, g_logp = torch.autograd.grad(term, [log_alpha, b["log_prob"]], allow_unused=True)
    assert g_la != 0 and (g_logp is None or not g_logp.any())


def test_mismatched_shapes_are_named():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match=r"\[\.\.\., n\] of one shape"):
        critic_loss(x, x, torch.zeros(5), x.bool(), x, x, x, torch.tensor(1.0), discount=0.9)
    with pytest.raises(ValueError, match="log_alpha"):
        alpha_loss(torch.zeros(2), x, -1.0)


def test_stats_are_the_means_of_q_the_target_and_alpha():
    b = _rows(seed=4)
    alpha = torch.tensor(ALPHAS[0], dtype=torch.float64)
    got = critic_loss(b["q1"][0], b["q2"][0], b["reward"][0], b["terminated"][0],
                      b["next_q1"][0], b["next_q2"][0], b["next_log_prob"][0], alpha,
                      discount=GAMMA)                 # reward_scale left at its default, 1
    soft_v = torch.minimum(b["next_q1"][0], b["next_q2"][0]) - ALPHAS[0] * b["next_log_prob"][0]
    y = b["reward"][0] + GAMMA * (~b["terminated"][0]).double() * soft_v
    assert got["stats/target"].item() == pytest.approx(y.mean().item(), abs=1e-12)
    assert got["stats/q1"].item() == pytest.approx(b["q1"][0].mean().item(), abs=1e-12)
    assert got["stats/q2"].item() == pytest.approx(b["q2"][0].mean().item(), abs=1e-12)
    got = alpha_loss(torch.tensor(math.log(ALPHAS[2]), dtype=torch.float64), b["log_prob"][0], H_BAR)
    assert got["stats/alpha"].item() == pytest.approx(ALPHAS[2], rel=1e-12)


def test_task_major_rows_give_each_tasks_term_as_one_task_alone_would():
    b = _rows(seed=6)
    alpha = torch.tensor(ALPHAS, dtype=torch.float64)
    log_alpha = alpha.log()
    batched = {
        "critic": critic_loss(b["q1"], b["q2"], b["reward"], b["terminated"], b["next_q1"],
                              b["next_q2"], b["next_log_prob"], alpha[:, None], discount=GAMMA),
        "actor": actor_loss(b["log_prob"], b["q1"], b["q2"], alpha[:, None]),
        "alpha": alpha_loss(log_alpha, b["log_prob"], H_BAR)}
    for k in range(len(ALPHAS)):
        alone = {
            "critic": critic_loss(b["q1"][k], b["q2"][k], b["reward"][k], b["terminated"][k],
                                  b["next_q1"][k], b["next_q2"][k], b["next_log_prob"][k],
                                  alpha[k], discount=GAMMA),
            "actor": actor_loss(b["log_prob"][k], b["q1"][k], b["q2"][k], alpha[k]),
            "alpha": alpha_loss(log_alpha[k], b["log_prob"][k], H_BAR)}
        for part, terms in alone.items():
            for name, value in terms.items():
                assert batched[part][name][k].item() == pytest.approx(value.item(), rel=1e-12), \
                    (part, name, k)


def test_log_alpha_needs_one_entry_per_task():
    with pytest.raises(ValueError, match=r"one entry per task, shape \(\)"):
        alpha_loss(torch.zeros(2), torch.zeros(4), -1.0)
    with pytest.raises(ValueError, match=r"one entry per task, shape \(3,\)"):
        alpha_loss(torch.zeros(2), torch.zeros(3, 4), -1.0)


_ROW_ARGS = {
    td_target: ["reward", "terminated", "next_q1", "next_q2", "next_log_prob"],
    critic_loss: ["q1", "q2", "reward", "terminated", "next_q1", "next_q2", "next_log_prob"],
    actor_loss: ["log_prob", "q1", "q2"],
}


@pytest.mark.parametrize("fn, odd", [(fn, name) for fn, names in _ROW_ARGS.items()
                                     for name in names])
def test_every_row_input_is_shape_checked(fn, odd):
    """One input of a single row would broadcast silently; it must be named instead."""
    names = _ROW_ARGS[fn]
    args = [torch.zeros(1 if name == odd else 4, dtype=torch.bool if name == "terminated"
                        else torch.float32) for name in names]
    kwargs = {"discount": 0.9} if fn is not actor_loss else {}
    with pytest.raises(ValueError, match=rf"of one shape.*'{odd}': \(1,\)"):
        fn(*args, torch.tensor(0.5), **kwargs)


def test_td_target_defaults_to_unscaled_rewards():
    reward, zero = torch.tensor([1.5, -2.0]), torch.zeros(2)
    y = td_target(reward, torch.ones(2, dtype=torch.bool), zero, zero, zero, torch.tensor(1.0),
                  discount=0.9)
    assert y.tolist() == [1.5, -2.0]
