"""The auxiliary losses (learner/aux): each term's per-step values against a direct
computation, the steps it masks, a gradient that reaches the shared torso, and a frozen
teacher that gets exactly zero gradient; then the learner's wiring of aux terms into the
combiner (heads get their own gradient, the torso the combined one)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from accord.config import config_from_dict, to_yaml
from combiners import make_combiner
from envs import EnvSpec
from learner.aux import AuxBatch, build_aux_terms
from learner.aux.distill import kl_per_step, teacher_policy
from learner.checkpoint import save_checkpoint
from learner.impala.learner import ImpalaLearner
from learner.impala.terms import parameter_roles
from models.torsos import MLP, NatureCNN
from tests.unit.impala_reference import hand_made_batch

T, B, A = 4, 3, 2
VECTOR_SPEC = EnvSpec((4,), np.dtype(np.float32), num_actions=A)


def cfg_with(aux: dict, combiner: str = "sum", options: dict | None = None, **learner):
    return config_from_dict({
        "env": {"kind": "gym", "tasks": ["CartPole-v1"], "envs_per_actor": 3},
        "actors": {"num_actors": 1, "unroll_length": T},
        "learner": {"model": "mlp", "batch_size": 3, "lr_decay": False, "max_grad_norm": 1e6,
                    "aux": aux, "combiner": {"name": combiner, "options": options or {}},
                    **learner},
    })


def aux_batch(torso, obs: torch.Tensor, seed: int = 0) -> AuxBatch:
    gen = torch.Generator().manual_seed(seed)
    z = torso(obs.flatten(0, 1)).view(T + 1, B, -1)
    episode_end = torch.zeros(T, B, dtype=torch.bool)
    episode_end[1, 0] = True
    return AuxBatch(obs=obs, z=z, logits=torch.randn(T, B, A, generator=gen, requires_grad=True),
                    actions=torch.randint(0, A, (T, B), generator=gen),
                    rewards=torch.randn(T, B, generator=gen), episode_end=episode_end,
                    task_id=torch.zeros(B, dtype=torch.int64))


def build(kind: str, spec=VECTOR_SPEC, feature_dim: int = 64):
    cfg = cfg_with({kind: {"hidden": 8}})
    return build_aux_terms(cfg, spec, feature_dim, torch.device("cpu"))[kind]


@pytest.mark.parametrize("kind", ["inverse_dynamics", "forward_dynamics", "reward", "autoencoder"])
def test_each_head_term_has_per_step_shape_and_reaches_the_torso(kind):
    torch.manual_seed(0)
    torso = MLP(4)
    term = build(kind)
    batch = aux_batch(torso, torch.randn(T + 1, B, 4))
    loss, mask = term.per_step(batch)
    assert loss.shape == (T, B) and mask.shape == (T, B)
    assert bool((loss >= 0).all())
    (loss * mask).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in torso.parameters()), kind
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.parameters()), kind


@pytest.mark.parametrize("kind", ["inverse_dynamics", "forward_dynamics"])
def test_dynamics_terms_skip_the_step_that_ends_an_episode(kind):
    torch.manual_seed(0)
    batch = aux_batch(MLP(4), torch.randn(T + 1, B, 4))
    _, mask = build(kind).per_step(batch)
    expected = torch.ones(T, B)
    expected[1, 0] = 0.0  # x_2 of column 0 starts the next episode
    assert torch.equal(mask, expected)


def test_inverse_dynamics_is_the_cross_entropy_of_the_taken_action():
    torch.manual_seed(0)
    term = build("inverse_dynamics")
    batch = aux_batch(MLP(4), torch.randn(T + 1, B, 4))
    loss, _ = term.per_step(batch)
    for t in range(T):
        for b in range(B):
            logits = term.head(torch.cat([batch.z[t, b], batch.z[t + 1, b]]))
            expected = -F.log_softmax(logits, -1)[batch.actions[t, b]]
            torch.testing.assert_close(loss[t, b], expected)


def test_forward_dynamics_predicts_the_next_features_without_moving_them():
    torch.manual_seed(0)
    term = build("forward_dynamics")
    obs = torch.randn(T + 1, B, 4)
    z = MLP(4)(obs.flatten(0, 1)).view(T + 1, B, -1).detach().requires_grad_(True)
    batch = aux_batch(MLP(4), obs)
    batch.z = z
    loss, mask = term.per_step(batch)
    a = F.one_hot(batch.actions, A).float()
    predicted = term.head(torch.cat([z[:-1], a], -1))
    torch.testing.assert_close(loss, 0.5 * (predicted - z[1:]).pow(2).mean(-1))
    (loss * mask).sum().backward()
    # z_T is only ever a target: a gradient there would mean the target is being moved.
    assert torch.equal(z.grad[T], torch.zeros_like(z.grad[T]))
    assert z.grad[0].abs().sum() > 0


def test_reward_prediction_regresses_the_reward():
    torch.manual_seed(0)
    term = build("reward")
    batch = aux_batch(MLP(4), torch.randn(T + 1, B, 4))
    loss, mask = term.per_step(batch)
    a = F.one_hot(batch.actions, A).float()
    predicted = term.head(torch.cat([batch.z[:-1], a], -1)).squeeze(-1)
    torch.testing.assert_close(loss, 0.5 * (predicted - batch.rewards) ** 2)
    assert torch.equal(mask, torch.ones(T, B))


def test_the_autoencoder_reconstructs_84x84_frames_scaled_like_the_torso():
    torch.manual_seed(0)
    spec = EnvSpec((4, 84, 84), np.dtype(np.uint8), num_actions=A)
    torso = NatureCNN()
    term = build("autoencoder", spec, feature_dim=torso.output_dim)
    obs = torch.randint(0, 256, (T + 1, B, 4, 84, 84), dtype=torch.uint8)
    batch = aux_batch(torso, obs)
    loss, _ = term.per_step(batch)
    decoded = term.decoder(batch.z[:-1].flatten(0, 1)).view(T, B, 4, 84, 84)
    torch.testing.assert_close(loss, (decoded - obs[:-1].float() / 255).pow(2).flatten(2).mean(-1))
    loss.sum().backward()
    assert torso.conv[0].weight.grad.abs().sum() > 0


def test_kl_is_zero_for_a_matching_student_and_positive_otherwise():
    logits = torch.randn(T, B, A)
    torch.testing.assert_close(kl_per_step(F.softmax(logits, -1), logits), torch.zeros(T, B))
    greedy = teacher_policy(logits, 0.0)
    assert torch.equal(greedy.sum(-1), torch.ones(T, B)) and set(greedy.unique().tolist()) <= {0.0, 1.0}
    expected = -(greedy * F.log_softmax(logits, -1)).sum(-1)  # a one-hot p has no entropy
    torch.testing.assert_close(kl_per_step(greedy, logits), expected)


# ---------------------------------------------------------------- the learner with aux terms

def write_teacher_run(tmp_path, seed: int = 7):
    """An accord run directory (config.yaml + checkpoint) of a trained-looking teacher."""
    cfg = cfg_with({})
    torch.manual_seed(seed)
    teacher = ImpalaLearner(cfg, VECTOR_SPEC)
    run_dir = tmp_path / "teacher"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    save_checkpoint(run_dir, teacher.state_dict(), 1)
    return run_dir, teacher


def test_a_checkpoint_teacher_is_frozen_and_a_copy_of_it_has_zero_kl(tmp_path):
    run_dir, teacher_learner = write_teacher_run(tmp_path)
    student = ImpalaLearner(cfg_with({"distill": {"teacher": str(run_dir)}}), VECTOR_SPEC)
    teacher = student.aux["distill"].teacher.model
    before = copy.deepcopy(teacher.state_dict())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in teacher.parameters() for q in student.parameters())
    # The student starts as the teacher: KL is exactly zero, and stays finite afterwards.
    student.model.load_state_dict(teacher_learner.model.state_dict())
    first = student.update(hand_made_batch(seed=1))
    assert first["loss/aux/distill"] == pytest.approx(0.0, abs=1e-6)
    second = student.update(hand_made_batch(seed=2))
    assert second["loss/aux/distill"] > 0.0
    assert all(p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    # The teacher is not part of the student's state: checkpoints stay the student's own.
    assert not any("teacher" in k for k in student.state_dict()["aux"])


def test_a_teacher_with_another_action_space_is_refused(tmp_path):
    run_dir, _ = write_teacher_run(tmp_path)
    spec = EnvSpec((4,), np.dtype(np.float32), num_actions=3)
    with pytest.raises(ValueError, match="actions"):
        ImpalaLearner(cfg_with({"distill": {"teacher": str(run_dir)}}), spec)


def test_recorded_teacher_probabilities_are_read_from_the_batch():
    cfg = config_from_dict({
        "env": {"kind": "gridworld", "tasks": ["world-1-main"], "envs_per_actor": 3},
        "actors": {"num_actors": 1, "unroll_length": T},
        "learner": {"batch_size": 3, "aux": {"distill": {"teacher": "q_aux"}}},
    })
    spec = EnvSpec((243,), np.dtype(np.float32), num_actions=4)
    learner = ImpalaLearner(cfg, spec)
    rng = np.random.default_rng(0)
    batch = {"obs": rng.standard_normal((T + 1, B, 243)).astype(np.float32),
             "actions": rng.integers(0, 4, (T, B)), "rewards": np.zeros((T, B), np.float32),
             "terminated": np.zeros((T, B), bool), "truncated": np.zeros((T, B), bool),
             "behaviour_logits": np.zeros((T, B, 4), np.float32), "task_id": np.zeros(B, np.int64)}
    with torch.no_grad():
        logits, _ = learner.model(torch.from_numpy(batch["obs"][:-1].reshape(T * B, -1)))
    batch["teacher_probs/distill"] = F.softmax(logits, -1).view(T, B, 4).numpy()
    assert learner.update(batch)["loss/aux/distill"] == pytest.approx(0.0, abs=1e-6)
    batch["teacher_probs/distill"] = np.roll(batch["teacher_probs/distill"], 1, axis=-1)
    assert learner.update(batch)["loss/aux/distill"] > 1e-3


def _main_and_aux_grads(learner, batch):
    """∇ of the main V-trace loss and of the aux term on every parameter, each from its own
    plain update of a copy (no combiner; rl_coef 0 leaves the aux term alone)."""
    grads = []
    for rl_coef, aux_weight in ((1.0, 0.0), (0.0, 1.0)):
        probe = copy.deepcopy(learner)
        probe.lcfg = probe.lcfg.model_copy(update={"rl_coef": rl_coef})
        probe.combiner = make_combiner("sum")
        probe.layout = "tasks"
        probe._shared, probe._task_params = parameter_roles("tasks", probe.model, probe.aux,
                                                            probe.cfg.env.tasks)
        for term in probe.aux.values():
            term.weight = aux_weight
        probe.optimizer.step = lambda: None
        probe.update(batch)
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad for p in probe.parameters()])
    return grads


@pytest.mark.parametrize("vf_share_layers", [True, False])
@pytest.mark.parametrize("threshold,gate", [(2.0, 0.0), (-2.0, 1.0)])
def test_cosine_gate_adds_the_aux_gradient_to_the_torso_only_while_open(threshold, gate,
                                                                        vf_share_layers):
    cfg = cfg_with({"inverse_dynamics": {"hidden": 8}}, "cosine_gate",
                   {"ema": 0.0, "threshold": threshold}, max_grad_norm=1e9,
                   vf_share_layers=vf_share_layers)
    torch.manual_seed(0)
    learner = ImpalaLearner(cfg, VECTOR_SPEC)
    batch = hand_made_batch(seed=3)
    main, aux = _main_and_aux_grads(learner, batch)
    learner.optimizer.step = lambda: None
    metrics = learner.update(batch)
    assert metrics["combiner/gate/aux/inverse_dynamics"] == gate
    n_model = len(list(learner.model.parameters()))
    for i, p in enumerate(learner.parameters()):
        if i < n_model:   # actor-critic (shared): main + gate * aux
            torch.testing.assert_close(p.grad, main[i] + gate * aux[i], rtol=1e-5, atol=1e-6)
        else:             # the aux head: its own term's gradient, whatever the gate
            torch.testing.assert_close(p.grad, aux[i], rtol=1e-5, atol=1e-6)
    assert any(a.abs().sum() > 0 for a in aux[:n_model])  # the aux term does reach the torso
    # A separate value network is the main term's own: it is not measured by the gate.
    value = {id(p) for p in learner.model.value_parameters()}
    assert len(value) == (0 if vf_share_layers else 6)  # MLP (2 layers) + value head
    assert not any(k.startswith("combiner/cos_now/aux/inverse_dynamics/value") for k in metrics)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_olaux_from_forward_mode_dots_updates_like_explicit_per_term_gradients(reduction):
    """learner.combiner.strategy: forward gives every weight the gradient the batched per-term
    path gives, and OL-AUX's weights move the same, over updates spanning two horizons, with
    the aux terms summed or averaged over steps alike."""
    aux = {"inverse_dynamics": {"hidden": 8}, "reward": {"hidden": 8, "weight": 0.5}}
    options = {"horizon": 2, "lr": 0.5}
    learners = {}
    for strategy in ("batched", "forward"):
        cfg = cfg_with(aux, "olaux", options, vf_share_layers=False, loss_reduction=reduction)
        cfg = cfg.model_copy(update={"learner": cfg.learner.model_copy(update={
            "combiner": cfg.learner.combiner.model_copy(update={"strategy": strategy})})})
        torch.manual_seed(0)
        learners[strategy] = ImpalaLearner(cfg, VECTOR_SPEC)
    assert learners["forward"]._forward_dots and not learners["batched"]._forward_dots
    for step in range(5):
        batch = hand_made_batch(seed=20 + step)
        metrics = {s: learner.update(batch) for s, learner in learners.items()}
        for p, q in zip(learners["batched"].parameters(), learners["forward"].parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
        for key in ("w/aux/inverse_dynamics", "w/aux/reward"):
            assert metrics["forward"][f"combiner/{key}"] == pytest.approx(
                metrics["batched"][f"combiner/{key}"], rel=1e-5)
    assert learners["forward"].combiner.weights.tolist() != [1.0, 1.0]  # w moved


@pytest.mark.parametrize("tasks,threshold", [(["CartPole-v1"], 0.02),
                                             (["CartPole-v1", "CartPole-v0"], 0.01)])
def test_cosine_gate_defaults_to_paper_000s_atari_setting(tasks, threshold):
    cfg = cfg_with({"reward": {}}, "cosine_gate")
    cfg = cfg.model_copy(update={"env": cfg.env.model_copy(update={"tasks": tuple(tasks)})})
    combiner = ImpalaLearner(cfg, VECTOR_SPEC).combiner
    assert (combiner.threshold, combiner.ema, combiner.per_layer) == (threshold, 0.999, True)
    explicit = cfg_with({"reward": {}}, "cosine_gate", {"threshold": 0.3})
    assert ImpalaLearner(explicit, VECTOR_SPEC).combiner.threshold == 0.3


def test_resume_with_aux_heads_and_a_stateful_combiner_is_exact(tmp_path):
    cfg = cfg_with({"inverse_dynamics": {"hidden": 8}, "reward": {"hidden": 8}}, "cosine_gate",
                   {"ema": 0.9})
    torch.manual_seed(0)
    first = ImpalaLearner(cfg, VECTOR_SPEC)
    for seed in range(3):
        first.update(hand_made_batch(seed=seed))
    path = save_checkpoint(tmp_path, first.state_dict(), first.updates)
    torch.manual_seed(99)
    second = ImpalaLearner(cfg, VECTOR_SPEC)
    second.load_state_dict(torch.load(path, weights_only=True))
    for seed in (10, 11):
        a, b = first.update(hand_made_batch(seed=seed)), second.update(hand_made_batch(seed=seed))
        assert a == b
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)
