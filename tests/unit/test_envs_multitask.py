"""envs/: MultiTaskVecEnv, make_multitask_vec_env and the PointGoal task family."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import MultiTaskVecEnv, make_multitask_vec_env
from envs.point_goal import GOALS, MAX_EPISODE_STEPS, TASK_IDS


class _FailingBoxEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        raise RuntimeError("simulator crashed")


gym.register("AccordFailingBox-v0", entry_point=_FailingBoxEnv)


# --- MultiTaskVecEnv ---------------------------------------------------------------------------


def test_task_ids_obs_and_episodes_follow_the_parts_in_order():
    env = make_multitask_vec_env("gym", ["PointGoal-NE-v0", "PointGoal-SW-v0"], [3, 1],
                                 envs_per_task=2, seed=0, task_one_hot=4)
    assert isinstance(env, envs.VecEnv)
    assert (env.num_envs, env.observation_shape, env.action_dim, env.num_actions) == (4, (6,), 2, None)
    np.testing.assert_array_equal(env.task_ids, [3, 3, 1, 1])
    obs = env.reset(seed=0)
    np.testing.assert_array_equal(obs[:, 2:].argmax(1), env.task_ids)
    for _ in range(MAX_EPISODE_STEPS):
        result = env.step(np.zeros((4, 2), np.float32))
    assert result.truncated.all()
    assert [(ep.task_id, ep.task_name) for ep in result.episodes] == [
        (3, "PointGoal-NE-v0"), (3, "PointGoal-NE-v0"), (1, "PointGoal-SW-v0"), (1, "PointGoal-SW-v0")]
    np.testing.assert_array_equal(result.final_obs[:, 2:].argmax(1), env.task_ids)
    env.close()


def test_actions_are_split_across_parts_like_stepping_each_part_alone():
    names, m, seed = ["PointGoal-NE-v0", "PointGoal-NW-v0", "PointGoal-SE-v0"], [1, 3, 2], 7
    parts = [envs.make_vec_env("gym", n, k, mk, seed=k) for k, (n, mk) in enumerate(zip(names, m))]
    alone = [envs.make_vec_env("gym", n, k, mk, seed=k) for k, (n, mk) in enumerate(zip(names, m))]
    env = MultiTaskVecEnv(parts)
    obs = env.reset(seed=seed)
    offsets = np.cumsum([0, *m])
    expected = np.concatenate([a.reset(seed=seed + int(o)) for a, o in zip(alone, offsets)])
    np.testing.assert_array_equal(obs, expected)
    actions = np.random.default_rng(0).uniform(-1, 1, (5, env.num_envs, 2)).astype(np.float32)
    for a in actions:
        result = env.step(a)
        singles = [p.step(a[lo:hi]) for p, lo, hi in zip(alone, offsets[:-1], offsets[1:])]
        np.testing.assert_array_equal(result.obs, np.concatenate([r.obs for r in singles]))
        np.testing.assert_array_equal(result.rewards, np.concatenate([r.rewards for r in singles]))
    env.close()


def test_reset_seeds_differ_across_parts_of_the_same_task():
    env = make_multitask_vec_env("gym", ["PointGoal-NE-v0", "PointGoal-NE-v0"], [0, 1], 2, seed=0)
    for obs in (env.reset(seed=11), env.reset()):
        assert len({tuple(o) for o in obs}) == 4
    env.close()


def test_env_errors_are_summed_over_parts():
    env = MultiTaskVecEnv([envs.make_vec_env("gym", "PointGoal-NE-v0", 0, 1, seed=0),
                           envs.make_vec_env("gym", "AccordFailingBox-v0", 1, 2, seed=0)])
    env.reset()
    for _ in range(2):
        result = env.step(np.zeros((3, 2), np.float32))
    assert env.env_errors == 2
    np.testing.assert_array_equal(result.truncated, [False, True, True])
    env.close()


def test_mismatched_spaces_and_bad_actions_are_rejected():
    with pytest.raises(ValueError, match="'CartPole-v1' and 'Pendulum-v1'"):
        make_multitask_vec_env("gym", ["CartPole-v1", "Pendulum-v1"], [0, 1], 1, seed=0)
    with pytest.raises(ValueError, match="2 task names"):
        make_multitask_vec_env("gym", ["PointGoal-NE-v0", "PointGoal-SW-v0"], [0], 1, seed=0)
    env = make_multitask_vec_env("gym", ["PointGoal-NE-v0", "PointGoal-SW-v0"], [0, 1], 2, seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        env.step(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        env.step(np.full((4, 2), 3.0))
    assert env.env_errors == 0
    env.close()


# --- PointGoal ---------------------------------------------------------------------------------


def _returns(task: str, direction: np.ndarray, seed: int = 0) -> float:
    env = envs.make_vec_env("gym", task, 0, 1, seed=0)
    env.reset(seed=seed)
    total = 0.0
    for _ in range(MAX_EPISODE_STEPS):
        result = env.step(direction[None].astype(np.float32))
        total += float(result.rewards[0])
    assert result.truncated.all() and result.episodes[0].score == pytest.approx(total, rel=1e-5)
    env.close()
    return total


def test_point_goal_tasks_are_registered_and_want_different_actions():
    assert len(TASK_IDS) >= 4
    for task in TASK_IDS:
        assert envs.describe("gym", task, task_one_hot=len(TASK_IDS)) == envs.EnvSpec(
            (2 + len(TASK_IDS),), np.dtype(np.float32), action_dim=2)
    directions = {name: np.sign(goal) for name, goal in GOALS.items()}
    # Heading for its own goal beats heading for any other goal, on every task: the tasks
    # pull a shared policy in different directions.
    for name in GOALS:
        own = _returns(f"PointGoal-{name}-v0", directions[name])
        for other in GOALS:
            if other != name:
                assert own > _returns(f"PointGoal-{name}-v0", directions[other]) + 10
    # Steering straight at the goal (capped at the unit box) ends within a step of it.
    env = envs.make_vec_env("gym", "PointGoal-SW-v0", 0, 1, seed=0)
    pos = env.reset(seed=0)[0]
    for _ in range(20):
        pos = env.step(np.clip((np.array(GOALS["SW"]) - pos) / 0.1, -1, 1)[None]).obs[0]
    assert np.linalg.norm(pos - GOALS["SW"]) < 1e-5
    env.close()
