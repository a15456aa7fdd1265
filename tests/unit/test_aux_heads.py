"""The aux terms' parts beyond their per-step formulas: the frame decoder's architecture (7 ->
9 -> 20 -> 84, ReLU between layers, bilinear resize for other frame sizes), the scaling of
vector observations, the teacher's greedy and tempered policies, which teacher head serves a
student task, and the names the terms are built under."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from accord.config import AUX_KINDS, config_from_dict, to_yaml
from envs import EnvSpec
from learner.aux import AUX_KINDS as LEARNER_AUX_KINDS, build_aux_terms
from learner.aux.autoencoder import _FrameDecoder
from learner.aux.distill import CheckpointTeacher, Distill, teacher_policy
from learner.checkpoint import save_checkpoint
from learner.impala.learner import ImpalaLearner
from models.torsos import MLP
from tests.unit.test_aux_losses import A, B, T, VECTOR_SPEC, aux_batch, build, cfg_with


def reference_decoder(dec: _FrameDecoder, z: torch.Tensor, sizes: list) -> torch.Tensor:
    """fc -> ReLU -> [64, 7, 7] -> deconv(3, s1) -> ReLU -> deconv(4, s2) -> ReLU -> deconv(8, s4),
    written out with the functional ops; `sizes` collects each spatial size on the way."""
    x = F.relu(F.linear(z, dec.fc[0].weight, dec.fc[0].bias)).view(-1, 64, 7, 7)
    sizes.append(x.shape[-1])
    convs = [m for m in dec.deconv if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 3
    for i, (conv, stride) in enumerate(zip(convs, (1, 2, 4))):
        x = F.conv_transpose2d(x, conv.weight, conv.bias, stride=stride)
        if i < 2:
            x = F.relu(x)
        sizes.append(x.shape[-1])
    return x


def test_the_frame_decoder_mirrors_the_nature_cnn_without_resizing_84x84():
    torch.manual_seed(0)
    dec = _FrameDecoder(16, (4, 84, 84))
    z = torch.randn(5, 16)
    sizes = []
    expected = reference_decoder(dec, z, sizes)
    assert sizes == [7, 9, 20, 84]
    assert [tuple(m.weight.shape[-2:]) for m in dec.deconv if hasattr(m, "weight")] == \
        [(3, 3), (4, 4), (8, 8)]
    out = dec(z)
    assert out.shape == (5, 4, 84, 84)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_other_frame_sizes_are_resized_bilinearly_to_the_input():
    torch.manual_seed(0)
    dec = _FrameDecoder(16, (3, 64, 48))
    z = torch.randn(2, 16)
    raw = reference_decoder(dec, z, [])
    expected = F.interpolate(raw, size=(64, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(dec(z), expected, rtol=0, atol=0)
    assert not torch.allclose(expected, F.interpolate(raw, size=(64, 48), mode="bilinear",
                                                      align_corners=True))


def test_frames_get_the_frame_decoder_and_vectors_the_mlp():
    frames = build("autoencoder", EnvSpec((4, 84, 84), np.dtype(np.uint8), num_actions=A), 16)
    assert isinstance(frames.decoder, _FrameDecoder)
    assert not isinstance(build("autoencoder").decoder, _FrameDecoder)


def test_vector_observations_are_reconstructed_unscaled():
    torch.manual_seed(0)
    term = build("autoencoder")
    obs = torch.randn(T + 1, B, 4) * 3.0
    batch = aux_batch(MLP(4), obs)
    loss, mask = term.per_step(batch)
    decoded = term.decoder(batch.z[:-1].flatten(0, 1)).view(T, B, 4)
    torch.testing.assert_close(loss, (decoded - obs[:-1]).pow(2).mean(-1))
    assert torch.equal(mask, torch.ones(T, B))


def test_the_greedy_teacher_splits_ties_and_the_tempered_one_divides_by_temperature():
    logits = torch.tensor([[1.0, 3.0, 3.0, -1.0], [2.0, 0.5, 0.0, 1.0]])
    torch.testing.assert_close(teacher_policy(logits, 0.0),
                               torch.tensor([[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(teacher_policy(logits, 0.5), F.softmax(logits * 2.0, -1))
    torch.testing.assert_close(teacher_policy(logits, 4.0), F.softmax(logits / 4.0, -1))


def two_task_teacher_run(tmp_path):
    """A teacher trained on CartPole-v0 and -v1 with a policy head per task."""
    cfg = cfg_with({}, per_task_heads=True)
    cfg = cfg.model_copy(update={"env": cfg.env.model_copy(
        update={"tasks": ("CartPole-v0", "CartPole-v1")})})
    run_dir = tmp_path / "teacher"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(5)
    save_checkpoint(run_dir, ImpalaLearner(cfg, VECTOR_SPEC).state_dict(), 1)
    return run_dir


def test_the_config_accepts_exactly_the_aux_kinds_the_learner_builds():
    assert AUX_KINDS == LEARNER_AUX_KINDS


def test_a_teacher_run_without_its_network_fields_is_refused_naming_them(tmp_path):
    run_dir = two_task_teacher_run(tmp_path)
    (run_dir / "config.yaml").write_text("env: {kind: gym, tasks: [CartPole-v1]}\nlearner: {model: mlp}\n")
    with pytest.raises(ValueError, match="learner.algorithm, learner.per_task_heads, learner.vf_share_layers"):
        CheckpointTeacher(run_dir, (4,), torch.device("cpu"))


def test_a_teacher_serves_each_student_task_with_its_own_head_or_the_first(tmp_path):
    run_dir = two_task_teacher_run(tmp_path)
    teacher = CheckpointTeacher(run_dir, (4,), torch.device("cpu"))
    assert [teacher.head_for(t) for t in ("CartPole-v1", "CartPole-v0", "Acrobot-v1")] == [1, 0, 0]
    # The student's task 0 (CartPole-v1) is distilled from the teacher's head 1, its task 1
    # (unknown to the teacher) from head 0, each at temperature 2.
    term = Distill("distill", 1.0, teacher=str(run_dir), temperature=2.0, tasks=None,
                   student_tasks=["CartPole-v1", "Acrobot-v1"], num_actions=A, obs_shape=(4,),
                   device=torch.device("cpu"))
    assert term.teacher_head.tolist() == [1, 0] and term.distilled.tolist() == [True, False]
    batch = aux_batch(MLP(4), torch.randn(T + 1, B, 4))
    batch.task_id = torch.tensor([0, 1, 0])
    probs = term.teacher_probs(batch)
    for b, head in enumerate([1, 0, 1]):
        logits, _ = teacher.model(batch.obs[:-1, b], torch.full((T,), head))
        torch.testing.assert_close(probs[:, b], F.softmax(logits / 2.0, -1))
    loss, mask = term.per_step(batch)
    assert mask.tolist() == [[1.0, 0.0, 1.0]] * T


def test_a_recorded_teacher_uses_no_head_and_distill_keeps_nothing_in_checkpoints():
    term = Distill("distill", 1.0, teacher="q_aux", temperature=1.0, tasks=["b"],
                   student_tasks=["a", "b"], num_actions=A, obs_shape=(4,),
                   device=torch.device("cpu"))
    assert term.teacher_head.tolist() == [0, 0] and term.distilled.tolist() == [False, True]
    # Both buffers follow the student's task list, which a resumed run may change.
    assert term.state_dict() == {}


def test_a_distill_terms_tasks_option_reaches_the_term():
    cfg = config_from_dict({
        "env": {"kind": "gridworld", "tasks": ["world-1-main", "world-2-main"], "envs_per_actor": 3},
        "actors": {"num_actors": 1, "unroll_length": T},
        "learner": {"batch_size": 3,
                    "aux": {"distill": {"teacher": "q_aux", "tasks": ["world-2-main"]}}},
    })
    spec = EnvSpec((243,), np.dtype(np.float32), num_actions=4)
    term = build_aux_terms(cfg, spec, 64, torch.device("cpu"))["distill"]
    assert term.distilled.tolist() == [False, True]


def test_each_term_is_built_under_its_config_name():
    aux = {"inverse_dynamics": {}, "forward_dynamics": {}, "reward": {}, "autoencoder": {},
           "recon": {"kind": "autoencoder"}}
    terms = build_aux_terms(cfg_with(aux), VECTOR_SPEC, 64, torch.device("cpu"))
    assert {name: term.name for name, term in terms.items()} == {name: name for name in aux}


def test_action_one_hots_span_every_action_even_when_a_batch_takes_only_the_first():
    torch.manual_seed(0)
    term = build("reward")
    batch = aux_batch(MLP(4), torch.randn(T + 1, B, 4))
    batch.actions = torch.zeros(T, B, dtype=torch.int64)
    loss, _ = term.per_step(batch)
    a = torch.tensor([1.0, 0.0]).expand(T, B, A)
    predicted = term.head(torch.cat([batch.z[:-1], a], -1)).squeeze(-1)
    torch.testing.assert_close(loss, 0.5 * (predicted - batch.rewards) ** 2)


def test_aux_heads_are_two_linear_layers_with_a_relu_between():
    torch.manual_seed(0)
    head = build("reward").head
    x = torch.randn(6, 66) * 3.0
    first, last = head[0], head[-1]
    torch.testing.assert_close(head(x), last(F.relu(first(x))))
