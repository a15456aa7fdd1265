"""The learner options that reach `ImpalaLearner.update` only through its wiring: loss
coefficients, V-trace clipping and `rl_coef` (checked against the plain loop of
`impala_reference` with non-default values, so a setting dropped on the way to `impala_loss`
shows), bf16 autocast, per-task metric names and aux terms on each task's own columns, and
loading a checkpoint written before aux heads existed."""
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
TASKS = ["CartPole-v1", "Acrobot-v1"]


def make_learner(tasks=("CartPole-v1",), batch_size: int = 3, seed: int = 0, **learner):
    cfg = config_from_dict({
        "env": {"kind": "gym", "tasks": list(tasks), "envs_per_actor": batch_size},
        "actors": {"num_actors": len(tasks), "unroll_length": 4},
        "learner": {"model": "mlp", "batch_size": batch_size, "lr_decay": False,
                    "max_grad_norm": 1e6, "discount": 0.9, **learner},
    })
    torch.manual_seed(seed)
    return ImpalaLearner(cfg, SPEC, device="cpu")


def reference_values(model, batch, lcfg, columns) -> dict[str, float]:
    """The reference's loss terms as numbers: compared by value, so built without a graph."""
    with torch.no_grad():
        return {name: float(value) for name, value in reference_loss(model, batch, lcfg, columns).items()}


# Every coefficient and clip away from its default (and the clips apart from each other), so a
# setting that `impala_loss` silently takes from its own defaults disagrees with the reference.
SETTINGS = {"baseline_coef": 0.3, "entropy_coef": 0.07, "clip_rho": 0.6, "clip_pg_rho": 0.75,
            "clip_c": 0.45}


@pytest.mark.parametrize("rl_coef", [0.5, 2.0])
def test_loss_coefficients_clips_and_rl_coef_reach_the_loss(rl_coef):
    learner = make_learner(rl_coef=rl_coef, **SETTINGS)
    batch = hand_made_batch(seed=3)
    reference = copy.deepcopy(learner.model)
    metrics = learner.update(batch)
    terms = reference_values(reference, batch, learner.lcfg, range(3))
    for name, value in terms.items():
        assert metrics[f"loss/{name}"] == pytest.approx(rl_coef * value, rel=1e-4, abs=1e-6), name
    assert metrics["loss/total"] == pytest.approx(rl_coef * sum(terms.values()), rel=1e-4)


def test_the_clips_are_active_on_the_test_batch():
    """Guards the test above: with clips at 100 the loss must differ, else they were idle."""
    batch = hand_made_batch(seed=3)
    clipped = make_learner(**SETTINGS).update(batch)
    loose = make_learner(**{**SETTINGS, "clip_rho": 100.0, "clip_pg_rho": 100.0,
                            "clip_c": 100.0}).update(batch)
    assert clipped["loss/main/pg"] != pytest.approx(loose["loss/main/pg"], rel=1e-3)
    assert clipped["loss/main/baseline"] != pytest.approx(loose["loss/main/baseline"], rel=1e-3)


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_the_weights_float32():
    batch = hand_made_batch(seed=2)
    plain, bf16 = make_learner(), make_learner(bf16=True)
    seen = []
    first = next(m for m in bf16.model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    metrics, metrics_bf16 = plain.update(batch), bf16.update(batch)
    assert seen and set(seen) == {torch.bfloat16}
    # the same update, rounded: close to float32's, and not equal to it (else bf16 did nothing)
    assert metrics_bf16["loss/total"] == pytest.approx(metrics["loss/total"], rel=2e-2)
    assert metrics_bf16["loss/total"] != metrics["loss/total"]
    for p, q in zip(plain.model.parameters(), bf16.model.parameters()):
        assert q.dtype == torch.float32
        torch.testing.assert_close(q, p, rtol=0, atol=1e-3)


def reference_reward_term(model, head, batch, columns, weight: float) -> float:
    """weight * mean over (t, b in columns) of 0.5 (r̂_t − r_t)², r̂ from (z_t, one-hot a_t)."""
    T = batch["actions"].shape[0]
    values = []
    with torch.no_grad():
        for b in columns:
            task = torch.tensor([int(batch["task_id"][b])])
            for t in range(T):
                z, _, _ = model.features_and_outputs(torch.as_tensor(batch["obs"][t, b][None]), task)
                a = torch.nn.functional.one_hot(torch.tensor([int(batch["actions"][t, b])]), 2)
                predicted = head(torch.cat([z, a.to(z.dtype)], dim=-1))[0, 0]
                values.append(0.5 * (float(predicted) - float(batch["rewards"][t, b])) ** 2)
    return weight * float(np.mean(values))


def test_each_task_reports_its_terms_under_its_name_with_aux_terms_on_its_own_columns():
    task_id = (0, 1, 1, 0, 1)
    learner = make_learner(TASKS, batch_size=5, loss_reduction="mean",
                           aux={"reward": {"hidden": 8, "weight": 0.7}})
    assert learner.layout == "tasks"
    batch = hand_made_batch(task_id=task_id, seed=4)
    reference, head = copy.deepcopy(learner.model), copy.deepcopy(learner.aux["reward"].head)
    metrics = learner.update(batch)
    for k, task in enumerate(TASKS):
        cols = [b for b, t in enumerate(task_id) if t == k]
        expected = reference_reward_term(reference, head, batch, cols, weight=0.7)
        assert metrics[f"loss/{task}/aux/reward"] == pytest.approx(expected, rel=1e-4), task
        for name, value in reference_values(reference, batch, learner.lcfg, cols).items():
            assert metrics[f"loss/{task}/{name}"] == pytest.approx(value, rel=1e-4,
                                                                   abs=1e-6), (task, name)
    assert not any(key.startswith(("loss/main/", "loss/aux/")) for key in metrics)


def test_a_checkpoint_without_aux_state_loads_into_a_learner_without_aux_heads():
    source = make_learner(seed=1)
    source.update(hand_made_batch(seed=5))
    state = source.state_dict()
    del state["aux"]  # written before the learner had aux heads
    target = make_learner(seed=2)
    target.load_state_dict(state)
    for p, q in zip(source.model.parameters(), target.model.parameters()):
        assert torch.equal(p, q)
    assert (target.updates, target.frames) == (source.updates, source.frames)


def test_main_aux_metrics_are_the_main_terms_and_each_aux_term_over_the_whole_batch():
    learner = make_learner(loss_reduction="mean", aux={"reward": {"hidden": 8, "weight": 0.7}},
                           combiner={"name": "cosine_gate"})
    assert learner.layout == "main_aux"
    batch = hand_made_batch(seed=6)
    reference, head = copy.deepcopy(learner.model), copy.deepcopy(learner.aux["reward"].head)
    metrics = learner.update(batch)
    main = reference_values(reference, batch, learner.lcfg, range(3))
    aux = reference_reward_term(reference, head, batch, range(3), weight=0.7)
    loss_keys = {key for key in metrics
                 if key.startswith("loss/") and not key.startswith("loss/stats/")}
    assert loss_keys == {*(f"loss/{name}" for name in main), "loss/aux/reward", "loss/total"}
    assert metrics["loss/aux/reward"] == pytest.approx(aux, rel=1e-4)
    assert metrics["loss/total"] == pytest.approx(sum(main.values()) + aux, rel=1e-4)


def test_frames_count_emulator_frames_of_the_frameskip():
    learner = make_learner()
    learner.cfg = learner.cfg.model_copy(update={"env": learner.cfg.env.model_copy(
        update={"kind": "atari"})})
    assert learner.cfg.frames_per_step == 4
    learner.update(hand_made_batch(seed=7))
    assert learner.frames == 4 * 3 * 4  # T x B agent steps, 4 frames each


def test_olaux_forward_dots_with_per_task_heads_match_the_batched_path():
    """The forward-mode pass re-runs the model with one head id per flat observation."""
    aux = {"reward": {"hidden": 8, "weight": 0.5}}
    learners = {}
    for strategy in ("batched", "forward"):
        learners[strategy] = make_learner(
            TASKS, aux=aux, per_task_heads=True, vf_share_layers=False,
            combiner={"name": "olaux", "strategy": strategy, "options": {"horizon": 2}})
    assert learners["forward"]._forward_dots
    for step in range(3):
        batch = hand_made_batch(task_id=(0, 1, 0), seed=30 + step)
        for learner in learners.values():
            learner.update(batch)
        for p, q in zip(learners["batched"].parameters(), learners["forward"].parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("strategy", ["sequential", "batched"])
def test_the_configured_combiner_strategy_reaches_apply_combined(monkeypatch, strategy):
    import learner.impala.learner as module

    seen = []
    real = module.apply_combined

    def recording(*args, **kwargs):
        seen.append(kwargs.get("strategy"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "apply_combined", recording)
    learner = make_learner(TASKS, combiner={"name": "pcgrad", "strategy": strategy})
    learner.update(hand_made_batch(task_id=(0, 1, 0), seed=8))
    assert seen == [strategy]


def test_a_run_of_nonfinite_gradients_stops_and_names_the_gradient_norm(monkeypatch):
    from learner.algorithm import NonFiniteLossError

    learner = make_learner(max_nonfinite_run=2)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda *a, **k: torch.tensor(float("inf")))
    learner.update(hand_made_batch(seed=9))
    with pytest.raises(NonFiniteLossError, match="last: gradient norm inf"):
        learner.update(hand_made_batch(seed=10))


def test_recorded_teacher_probabilities_keep_an_aux_name_that_contains_a_slash():
    learner = make_learner()
    batch = hand_made_batch(seed=11)
    probs = np.full((4, 3, 2), 0.5, np.float32)
    batch["teacher_probs/distill/q_aux"] = probs
    tensors = [torch.as_tensor(batch[key]) for key in ("obs", "actions", "rewards", "task_id")]
    make = learner._aux_batch_maker(batch, *tensors, torch.as_tensor(batch["terminated"]))
    aux_batch = make(torch.zeros(5 * 3, 8), torch.zeros(5 * 3, 2))
    assert list(aux_batch.teacher_probs) == ["distill/q_aux"]
    torch.testing.assert_close(aux_batch.teacher_probs["distill/q_aux"], torch.as_tensor(probs))
