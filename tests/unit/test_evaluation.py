"""Evaluation (`actors/evaluation.py`, behind `accord eval` and the evaluator actor), in process:
a round takes each env's first episode (not the first to end), `episodes` is exact across
rounds, each task plays on its own envs with its own task id, `max_steps` caps the steps,
success is averaged where the env reports it, and the act function runs the given weights
(greedy, sampled, or SAC's tanh(mean))."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import actors.evaluation as evaluation
from accord.config import config_from_dict
from actors.evaluation import TaskResult, build_eval_policy, eval_metrics, evaluate_policy
from actors.policy import policy_network
from envs import EpisodeStats, StepResult, describe
from tests.support.scripted_env import BOX_TASKS, SEED_MOD, TASK, episode_length
from tests.support.weights import random_weights

REPO = Path(__file__).resolve().parents[2]


def impala_cfg(tasks=(TASK,)):
    return config_from_dict({"env": {"kind": "gym", "tasks": list(tasks)},
                             "learner": {"model": "mlp"}})


def sac_cfg(tasks=BOX_TASKS[:2]):
    return config_from_dict({"env": {"kind": "gym", "tasks": list(tasks)},
                             "actors": {"num_actors": len(tasks)},
                             "learner": {"model": "mlp", "algorithm": "sac",
                                         "sac": {"hidden": [8, 8]}}})


class Recorder:
    """An act function that takes action 0 and keeps what it was shown."""

    def __init__(self, action_dim: int | None = None):
        self.action_dim, self.calls = action_dim, []

    def __call__(self, obs: np.ndarray, task: torch.Tensor) -> np.ndarray:
        self.calls.append((obs.copy(), task.clone()))
        if self.action_dim:
            return np.zeros((len(obs), self.action_dim), np.float32)
        return np.zeros(len(obs), np.int64)


def first_episode_scores(first_obs: np.ndarray) -> list[float]:
    """Episode 0 of each scripted copy: length L from its seed, reward 10 * step with action 0."""
    lengths = [episode_length(int(s) % SEED_MOD, 0) for s in first_obs[:, 0]]
    return [10.0 * L * (L - 1) / 2 for L in lengths]


def test_a_round_takes_each_envs_first_episode():
    act = Recorder()
    result = evaluate_policy(impala_cfg(), act, episodes=6, seed=11)[TASK]
    first_obs = act.calls[0][0]
    assert len(first_obs) == 6 and len(set(first_obs[:, 0])) == 6     # one episode per env
    expected = first_episode_scores(first_obs)
    assert len(set(expected)) > 1      # lengths differ, so later episodes would show
    assert result.episodes == 6 and result.success_rate is None
    assert result.mean_return == pytest.approx(np.mean(expected))
    assert result.std_return == pytest.approx(np.std(expected))
    # It stops once every env has ended an episode: the longest one's length in steps.
    assert len(act.calls) == max(episode_length(int(s) % SEED_MOD, 0) for s in first_obs[:, 0])


def test_more_episodes_than_envs_take_rounds_and_keep_exactly_that_many():
    act = Recorder()
    result = evaluate_policy(impala_cfg(), act, episodes=40, seed=3)[TASK]
    starts = [i for i, (obs, _) in enumerate(act.calls) if (obs[:, 2] == 0).all()]
    assert len(starts) == 2 and all(len(obs) == 32 for obs, _ in act.calls)   # 32 envs at most
    scores = []
    for start in starts:    # within a round, episodes end shortest first, then in env order
        lengths = [episode_length(int(s) % SEED_MOD, 0) for s in act.calls[start][0][:, 0]]
        scores += [10.0 * lengths[i] * (lengths[i] - 1) / 2
                   for i in sorted(range(32), key=lambda i: (lengths[i], i))]
    assert result.episodes == 40
    assert result.mean_return == pytest.approx(np.mean(scores[:40]))
    assert result.std_return == pytest.approx(np.std(scores[:40]))


def test_the_same_seed_gives_the_same_evaluation_and_another_seed_other_envs():
    def first_seeds(seed):
        act = Recorder()
        return evaluate_policy(impala_cfg(), act, 4, seed)[TASK], act.calls[0][0][:, 0]
    (a, seeds_a), (b, seeds_b), (_, seeds_c) = first_seeds(5), first_seeds(5), first_seeds(6)
    assert a == b and np.array_equal(seeds_a, seeds_b) and not np.array_equal(seeds_a, seeds_c)


def test_each_task_plays_its_own_envs_under_its_own_task_id():
    act = Recorder(action_dim=2)
    results = evaluate_policy(sac_cfg(), act, episodes=3, seed=0)
    assert list(results) == list(BOX_TASKS[:2])
    shown = {int(task[0]) for _, task in act.calls}
    assert shown == {0, 1}
    for obs, task in act.calls:
        assert len(obs) == 3 and (task == task[0]).all() and task.dtype == torch.int64
        # SAC's multi-task observations end in the task's one-hot.
        np.testing.assert_array_equal(obs[:, 4:], np.eye(2, dtype=np.float32)[task.numpy()])
    assert all(r.episodes == 3 for r in results.values())


def test_max_steps_caps_the_agent_steps_of_a_task():
    act = Recorder()
    none = evaluate_policy(impala_cfg(), act, episodes=4, seed=2, max_steps=4)[TASK]
    assert len(act.calls) == 1      # 4 envs, 4 steps: one step each, too short for an episode
    assert none.episodes == 0 and np.isnan(none.mean_return) and np.isnan(none.std_return)
    act = Recorder()
    some = evaluate_policy(impala_cfg(), act, episodes=4, seed=2, max_steps=8)[TASK]
    lengths = [episode_length(int(s) % SEED_MOD, 0) for s in act.calls[0][0][:, 0]]
    assert len(act.calls) == 2 and some.episodes == lengths.count(2)
    # The cap is checked before each vector step: 5 agent steps allowed, 8 taken.
    act = Recorder()
    evaluate_policy(impala_cfg(), act, episodes=4, seed=2, max_steps=5)
    assert len(act.calls) == 2


def test_the_step_cap_spans_rounds():
    """40 episodes take two rounds of 32 envs; a cap one vector step into the second round
    keeps the first round's 32 episodes and stops there (no episode is one step long)."""
    act = Recorder()
    evaluate_policy(impala_cfg(), act, episodes=40, seed=3)
    starts = [i for i, (obs, _) in enumerate(act.calls) if (obs[:, 2] == 0).all()]
    first_round_steps = 32 * starts[1]
    act = Recorder()
    capped = evaluate_policy(impala_cfg(), act, episodes=40, seed=3,
                             max_steps=first_round_steps + 32)[TASK]
    assert capped.episodes == 32 and len(act.calls) == starts[1] + 1


class ScriptedSuccessEnv:
    """A fake vector env: env i ends an episode every i + 1 steps, with score i; envs i < 3
    report success (i + rounds) % 2 == 0, where rounds counts resets; the others none."""

    def __init__(self, task_id: int, num_envs: int):
        self.task_id, self.num_envs, self.t, self.rounds = task_id, num_envs, 0, -1
        self.closed = False

    def reset(self, seed=None):
        self.t, self.rounds = 0, self.rounds + 1
        return np.zeros((self.num_envs, 1), np.float32)

    def step(self, actions):
        self.t += 1
        ended = np.array([self.t % (i + 1) == 0 for i in range(self.num_envs)])
        episodes = [EpisodeStats(self.task_id, "t", float(i), i + 1,
                                 float((i + self.rounds) % 2 == 0) if i < 3 else None)
                    for i in np.flatnonzero(ended)]
        zeros = np.zeros(self.num_envs, np.float32)
        return StepResult(np.zeros((self.num_envs, 1), np.float32), zeros, ended,
                          np.zeros(self.num_envs, bool), episodes)

    def close(self):
        self.closed = True


def test_success_is_averaged_over_the_episodes_that_report_it(monkeypatch):
    made = []

    def fake_env(kind, name, task_id, num_envs, seed, **options):
        made.append(ScriptedSuccessEnv(task_id, num_envs))
        return made[-1]

    monkeypatch.setattr(evaluation, "make_vec_env", fake_env)
    result = evaluate_policy(impala_cfg(), Recorder(), episodes=5, seed=0)[TASK]
    # Envs 0..4 give scores 0..4 (env 0 ends every step but counts once); envs 0, 2 succeed, 1 fails.
    assert result == TaskResult(2.0, float(np.std(range(5))), 5, pytest.approx(2 / 3))
    assert made[0].closed
    # Two rounds of 32 envs: round 0 succeeds on envs 0, 2 and round 1 on env 1: 3 of 6.
    assert evaluate_policy(impala_cfg(), Recorder(), episodes=40, seed=0)[TASK].success_rate == 0.5


def test_eval_metrics_name_return_and_success_per_task_and_their_mean():
    results = {"a": TaskResult(1.5, 0.1, 3, 0.5), "b": TaskResult(-2.0, 0.0, 3, None),
               "c": TaskResult(0.0, 0.0, 3, 1.0)}
    assert eval_metrics(results) == {"eval/return/a": 1.5, "eval/return/b": -2.0,
                                     "eval/return/c": 0.0, "eval/success/a": 0.5,
                                     "eval/success/c": 1.0, "eval/success_mean": 0.75}
    assert eval_metrics({"b": results["b"]}) == {"eval/return/b": -2.0}


def test_the_act_function_runs_the_weights_it_was_given():
    cfg, spec = impala_cfg(), describe("gym", TASK)
    weights = random_weights(policy_network(cfg, spec), 0, scale=3.0)
    twin = policy_network(cfg, spec)
    twin.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
    obs = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    task = torch.zeros(64, dtype=torch.int64)
    with torch.no_grad():
        logits, _ = twin(torch.from_numpy(obs), task)
    greedy = build_eval_policy(cfg, spec, weights, greedy=True)(obs, task)
    np.testing.assert_array_equal(greedy, logits.argmax(-1).numpy())
    assert len(set(greedy.tolist())) > 1
    sample = build_eval_policy(cfg, spec, weights)
    torch.manual_seed(1)
    sampled = sample(obs, task)
    torch.manual_seed(1)
    expected = torch.distributions.Categorical(logits=logits).sample().numpy()
    np.testing.assert_array_equal(sampled, expected)
    assert not np.array_equal(sampled, greedy)


READ_ONLY_WEIGHTS = """
import numpy as np, torch
from actors.evaluation import build_eval_policy
from actors.policy import policy_network
from envs import describe
from tests.support.weights import random_weights
from tests.unit.test_evaluation import TASK, impala_cfg

cfg, spec = impala_cfg(), describe("gym", TASK)
weights = random_weights(policy_network(cfg, spec), 0)
for array in weights.values():
    array.setflags(write=False)  # as ray.get hands them out of the object store
obs = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
build_eval_policy(cfg, spec, weights, greedy=True)(obs, torch.zeros(4, dtype=torch.int64))
# A checkpoint's weights, as `accord eval` loads them, are tensors.
tensors = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
build_eval_policy(cfg, spec, tensors, greedy=True)(obs, torch.zeros(4, dtype=torch.int64))
"""


def test_weights_from_ray_or_a_checkpoint_load_without_a_warning():
    """The evaluator must copy, not share, read-only weights: torch warns on a non-writable
    array, a line in every run's log; and `accord eval`'s tensors must not warn either. A fresh interpreter with warnings as errors, because torch
    gives that warning once per process and an earlier test may have used it up."""
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", READ_ONLY_WEIGHTS],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_sac_is_evaluated_with_its_deterministic_policy():
    cfg = sac_cfg()
    spec = describe("gym", BOX_TASKS[0], task_one_hot=2)
    weights = random_weights(policy_network(cfg, spec), 1)
    twin = policy_network(cfg, spec)
    twin.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
    obs = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32)
    task = torch.tensor([0, 1] * 4)
    act = build_eval_policy(cfg, spec, weights)
    with torch.no_grad():
        mean, _ = twin(torch.from_numpy(obs), task)
    np.testing.assert_allclose(act(obs, task), torch.tanh(mean).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(act(obs, task), act(obs, task))
