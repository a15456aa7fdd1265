"""envs/metaworld.py against the real metaworld package (MuJoCo)."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs import metaworld as mw

pytest.importorskip("metaworld")
from metaworld.policies import SawyerReachV3Policy  # noqa: E402

# The scripted policies warn that their gains exceed the action box; actions are clipped here.
pytestmark = pytest.mark.filterwarnings("ignore:Constant:UserWarning")
GOAL = slice(36, 39)  # the goal position within Meta-World's 39-dim observation


def test_benchmark_task_lists_and_names():
    mt10, mt50 = mw.benchmark_tasks("MT10"), mw.benchmark_tasks("MT50")
    assert len(mt10) == 10 and len(set(mt10)) == 10 and mt10[0] == "reach-v3"
    assert len(mt50) == 50 and set(mt10) <= set(mt50)
    for name in mt10:
        envs.validate_task("metaworld", name)
    assert envs.normalize_task("metaworld", " Reach ") == "reach-v3"
    with pytest.raises(ValueError, match="'reech-v3'.*'reach-v3'"):
        envs.validate_task("metaworld", "reech-v3")
    with pytest.raises(ValueError, match="not one of the MT10"):
        envs.make_vec_env("metaworld", "assembly-v3", 0, 1, seed=0, benchmark="MT10")
    with pytest.raises(ValueError, match="MT1"):
        mw.benchmark_tasks("MT1")
    with pytest.raises(ValueError, match="unknown Meta-World benchmark 'MT20'"):
        envs.make_vec_env("metaworld", "reach-v3", 0, 1, seed=0, benchmark="MT20")


def test_describe_matches_the_env():
    spec = envs.describe("metaworld", "reach-v3", task_one_hot=10)
    assert spec == envs.EnvSpec((49,), np.dtype(np.float32), action_dim=4)
    env = envs.make_vec_env("metaworld", "reach-v3", 0, 1, seed=0, task_one_hot=10)
    assert (env.observation_shape, env.observation_dtype, env.action_dim) == (
        spec.obs_shape, spec.obs_dtype, spec.action_dim)
    env.close()


def _reach(policy, obs: np.ndarray, away: bool = False) -> np.ndarray:
    """Meta-World's scripted reach action for one observation, or its opposite."""
    action = np.clip(policy.get_action(obs[:39].astype(np.float64)), -1, 1)
    return -action if away else action


def test_episodes_truncate_at_500_steps_and_count_success_at_any_step():
    # Env 0 reaches the goal, then leaves it for the last 200 steps: the episode still counts
    # as a success. Env 1 holds still and never succeeds. Only the 500-step limit ends them.
    env = envs.make_vec_env("metaworld", "reach-v3", task_id=0, num_envs=2, seed=0, task_one_hot=10)
    policy = SawyerReachV3Policy()
    obs = env.reset(seed=1)
    assert obs.shape == (2, 49) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[:, 39:].argmax(1), [0, 0])
    for t in range(1, 501):
        action = np.zeros((2, 4), np.float32)
        action[0] = _reach(policy, obs[0], away=t > 300)
        result = env.step(action)
        if t < 500:
            assert not (result.truncated | result.terminated).any() and result.episodes == []
            obs = result.obs
    assert result.truncated.all() and not result.terminated.any()
    assert [(ep.length, ep.success) for ep in result.episodes] == [(500, 1.0), (500, 0.0)]
    # final_obs is the 500th observation (hand away from the goal again); obs already the
    # next episode's first.
    assert np.linalg.norm(result.final_obs[0, :3] - result.final_obs[0, GOAL]) > 0.1
    assert not np.allclose(result.final_obs, result.obs)
    # The episodes were cut, not ended: a further step is the next episode's first.
    after = env.step(np.zeros((2, 4), np.float32))
    assert not after.truncated.any()
    env.close()


def test_success_does_not_carry_over_to_the_next_episode():
    env = envs.make_vec_env("metaworld", "reach-v3", 0, 1, seed=0, max_episode_steps=80)
    policy = SawyerReachV3Policy()
    obs, successes = env.reset(seed=2), []
    for t in range(160):  # episode 1 reaches the goal, episode 2 holds still
        result = env.step(_reach(policy, obs[0])[None] if t < 80 else np.zeros((1, 4), np.float32))
        obs, successes = result.obs, successes + [ep.success for ep in result.episodes]
    assert successes == [1.0, 0.0]
    env.close()


def _goals_over_episodes(seed: int, episodes: int = 2, m: int = 3, steps: int = 20):
    """(variation, goal) of every episode start; episodes cut at ``steps``."""
    env = envs.make_vec_env("metaworld", "reach-v3", 0, m, seed=0, max_episode_steps=steps)
    obs = env.reset(seed=seed)
    seen = [(int(k), tuple(g)) for k, g in zip(env.variations, obs[:, GOAL])]
    for _ in range(episodes - 1):
        for _ in range(steps):
            result = env.step(np.zeros((m, 4), np.float32))
        assert result.truncated.all() and [ep.length for ep in result.episodes] == [steps] * m
        seen += [(int(k), tuple(g)) for k, g in zip(env.variations, result.obs[:, GOAL])]
    env.close()
    return seen


def test_episodes_draw_goal_variations_reproducibly_from_the_seed():
    seen = _goals_over_episodes(seed=3)
    goal_of = {}
    for variation, goal in seen:
        assert goal_of.setdefault(variation, goal) == goal  # a variation fixes the goal
    assert len(set(goal_of.values())) >= 3  # episodes get different goals
    assert _goals_over_episodes(seed=3) == seen
    assert _goals_over_episodes(seed=4) != seen


def test_bad_actions_are_rejected():
    env = envs.make_vec_env("metaworld", "reach-v3", 0, 2, seed=0)
    env.reset()
    for bad in (np.zeros((2, 3), np.float32), np.full((2, 4), 1.5), np.zeros((2, 4), np.int64)):
        with pytest.raises(ValueError):
            env.step(bad)
    assert env.env_errors == 0
    env.close()


def test_multitask_actor_over_two_mt10_tasks():
    tasks = mw.benchmark_tasks("MT10")[:2]
    env = envs.make_multitask_vec_env("metaworld", list(tasks), [0, 1], 1, seed=0, task_one_hot=10)
    obs = env.reset(seed=0)
    np.testing.assert_array_equal(env.task_ids, [0, 1])
    np.testing.assert_array_equal(obs[:, 39:].argmax(1), [0, 1])
    result = env.step(np.zeros((2, 4), np.float32))
    assert result.obs.shape == (2, 49) and result.final_obs.shape == (2, 49)
    env.close()
