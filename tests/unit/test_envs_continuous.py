"""envs/: continuous actions, final_obs, the task one-hot and the gym kind with Box actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs

# --- test envs ---------------------------------------------------------------------------------


class _EchoEnv(gym.Env):
    """Observes [steps since reset, last action...]; Box actions with asymmetric bounds, so a
    wrong offset or scale in the [-1, 1] mapping shows. Raises on its ``fail_at``-th step."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = gym.spaces.Box(np.array([0.0, -3.0], np.float32), np.array([1.0, 5.0], np.float32))

    def __init__(self, fail_at: int | None = None):
        self.fail_at, self.steps, self.t = fail_at, 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("simulator crashed")
        self.t += 1
        return np.array([self.t, *action], np.float32), 1.0, False, False, {}


gym.register("AccordEcho-v0", entry_point=_EchoEnv, max_episode_steps=4)


def _raw_pendulums(n: int, seed: int):
    """Plain gymnasium Pendulums seeded as SyncVectorEnv seeds env i (seed + i)."""
    raw = [gym.make("Pendulum-v1") for _ in range(n)]
    first = [env.reset(seed=seed + i)[0] for i, env in enumerate(raw)]
    return raw, np.stack(first)


# --- action rescaling and checks ---------------------------------------------------------------


def test_actions_in_unit_box_are_rescaled_linearly_to_the_bounds():
    env = envs.make_vec_env("gym", "AccordEcho-v0", 0, 3, seed=0)
    assert (env.action_dim, env.num_actions) == (2, None)
    env.reset()
    unit = np.array([[-1.0, -1.0], [1.0, 1.0], [0.5, -0.25]], np.float32)
    echoed = env.step(unit).obs[:, 1:]
    low, high = np.array([0.0, -3.0]), np.array([1.0, 5.0])
    np.testing.assert_allclose(echoed, low + (unit + 1) / 2 * (high - low), rtol=0, atol=1e-6)
    env.close()


def test_pendulum_steps_like_the_raw_env_given_the_rescaled_action():
    seed, m = 5, 2
    env = envs.make_vec_env("gym", "Pendulum-v1", 0, m, seed=0)
    raw, raw_obs = _raw_pendulums(m, seed)
    np.testing.assert_array_equal(env.reset(seed=seed), raw_obs)
    rng = np.random.default_rng(0)
    for _ in range(30):
        unit = rng.uniform(-1, 1, (m, 1)).astype(np.float32)
        result = env.step(unit)
        for i, raw_env in enumerate(raw):
            obs, reward, *_ = raw_env.step(unit[i] * 2.0)  # Pendulum's torque bounds are [-2, 2]
            np.testing.assert_array_equal(result.obs[i], obs)
            assert result.rewards[i] == np.float32(reward)
    env.close()


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2,), np.float32), "shape"),
    (np.zeros((2, 1), np.float32), "shape"),
    (np.zeros((2, 2), np.int64), "float"),
    (np.array([[0.0, np.nan], [0.0, 0.0]]), "finite"),
    (np.array([[0.0, np.inf], [0.0, 0.0]]), "finite"),
    (np.array([[0.0, 1.01], [0.0, 0.0]]), r"\[-1, 1\]"),
    (np.array([[-1.2, 0.0], [0.0, 0.0]]), r"\[-1, 1\]"),
])
def test_bad_continuous_actions_raise_and_are_not_env_errors(bad, match):
    env = envs.make_vec_env("gym", "AccordEcho-v0", 0, 2, seed=0)
    env.reset()
    with pytest.raises(ValueError, match=match):
        env.step(bad)
    assert env.env_errors == 0
    env.close()


def test_float_rounding_past_the_unit_box_is_clipped():
    env = envs.make_vec_env("gym", "AccordEcho-v0", 0, 1, seed=0)
    env.reset()
    echoed = env.step(np.array([[1.0 + 1e-7, -1.0 - 1e-7]])).obs[0, 1:]
    np.testing.assert_array_equal(echoed, [1.0, -3.0])
    env.close()


def test_box_action_spec_and_one_hot_in_describe():
    assert envs.describe("gym", "Pendulum-v1") == envs.EnvSpec((3,), np.dtype(np.float32), action_dim=1)
    assert envs.describe("gym", "Pendulum-v1", task_one_hot=4).obs_shape == (7,)
    assert envs.describe("gym", "CartPole-v1", task_one_hot=2) == envs.EnvSpec(
        (6,), np.dtype(np.float32), num_actions=2)
    with pytest.raises(ValueError, match="vector observations"):
        envs.describe("atari", "pong", task_one_hot=2)
    with pytest.raises(ValueError, match="vector observations"):
        envs.make_vec_env("atari", "pong", 0, 1, seed=0, task_one_hot=2)


# --- final_obs ---------------------------------------------------------------------------------


def test_final_obs_is_the_raw_envs_last_obs_at_the_200_step_truncation():
    seed, m = 3, 2
    env = envs.make_vec_env("gym", "Pendulum-v1", 0, m, seed=0)
    raw, _ = _raw_pendulums(m, seed)
    env.reset(seed=seed)
    actions = np.random.default_rng(1).uniform(-1, 1, (200, m, 1)).astype(np.float32)
    for t in range(200):
        result = env.step(actions[t])
        raw_steps = [raw_env.step(actions[t, i] * 2.0) for i, raw_env in enumerate(raw)]
        if t < 199:
            assert not result.truncated.any()
            np.testing.assert_array_equal(result.final_obs, result.obs)
    assert result.truncated.all() and not result.terminated.any()
    assert all(truncated for *_, truncated, _ in raw_steps)  # the raw envs agree: step 200
    np.testing.assert_array_equal(result.final_obs, np.stack([obs for obs, *_ in raw_steps]))
    assert not np.allclose(result.final_obs, result.obs)  # obs already holds the next episode
    assert [ep.length for ep in result.episodes] == [200, 200]
    env.close()


def test_failed_step_reports_each_envs_last_obs_as_final_obs():
    env = envs.make_vec_env("gym", "AccordEcho-v0", 0, 2, seed=0, env_kwargs={"fail_at": 3})
    env.reset()
    env.step(np.zeros((2, 2), np.float32))
    last = env.step(np.full((2, 2), 0.5, np.float32)).obs
    result = env.step(np.zeros((2, 2), np.float32))  # the third step raises
    assert env.env_errors == 1 and result.truncated.all()
    np.testing.assert_array_equal(result.final_obs, last)
    np.testing.assert_array_equal(result.obs, np.zeros((2, 3)))
    env.close()


# --- task one-hot ------------------------------------------------------------------------------


def test_task_one_hot_is_appended_to_obs_and_final_obs():
    env = envs.make_vec_env("gym", "AccordEcho-v0", task_id=2, num_envs=2, seed=0, task_one_hot=3)
    assert env.observation_shape == (6,)
    np.testing.assert_array_equal(env.task_ids, [2, 2])
    obs = env.reset()
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs, [[0, 0, 0, 0, 0, 1]] * 2)
    for _ in range(4):  # AccordEcho-v0 truncates at 4 steps
        result = env.step(np.zeros((2, 2), np.float32))
    assert result.truncated.all()
    np.testing.assert_array_equal(result.final_obs[:, 0], [4, 4])
    np.testing.assert_array_equal(result.final_obs[:, 3:], [[0, 0, 1]] * 2)
    np.testing.assert_array_equal(result.obs[:, 3:], [[0, 0, 1]] * 2)
    env.close()


def test_task_one_hot_rejects_a_task_id_it_cannot_hold():
    with pytest.raises(ValueError, match="task_id 3 does not fit a one-hot of length 3"):
        envs.make_vec_env("gym", "Pendulum-v1", task_id=3, num_envs=1, seed=0, task_one_hot=3)
