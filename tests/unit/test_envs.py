"""envs/: real ale-py and gymnasium envs behind the VecEnv contract."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import EpisodeStats, VecEnv


def _step_and_check_lengths(env: VecEnv, steps: int, rng: np.random.Generator):
    """Steps random actions; checks every EpisodeStats length against the test's own count of
    steps per env (episodes come in env order) and that a finished env's obs is a reset obs."""
    since_reset = np.zeros(env.num_envs, dtype=int)
    finished: list[tuple[EpisodeStats, bool]] = []
    done_obs = []
    for _ in range(steps):
        result = env.step(rng.integers(0, env.num_actions, env.num_envs))
        assert result.obs.shape == (env.num_envs, *env.observation_shape)
        assert result.obs.dtype == env.observation_dtype
        assert result.rewards.dtype == np.float32 and result.rewards.shape == (env.num_envs,)
        since_reset += 1
        done = np.flatnonzero(result.terminated | result.truncated)
        assert len(result.episodes) == len(done)
        for i, ep in zip(done, result.episodes):
            assert ep.length == since_reset[i]
            assert (ep.task_id, ep.task_name) == (env.task_id, env.task_name)
            finished.append((ep, bool(result.truncated[i])))
            done_obs.append(result.obs[i])
            since_reset[i] = 0
    return finished, done_obs


# --- Atari -------------------------------------------------------------------------------------


def test_atari_shapes_truncation_and_same_step_reset():
    env = envs.make_vec_env("atari", "BreakoutNoFrameskip-v4", task_id=3, num_envs=2, seed=0,
                            max_episode_frames=200)
    assert env.task_name == "breakout" and env.num_actions == 4
    obs = env.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    finished, done_obs = _step_and_check_lengths(env, 120, np.random.default_rng(0))
    env.close()
    # 200 frames at frameskip 4 cut every episode at 50 agent steps (random play rarely loses
    # all five lives that fast, and a terminated episode would be shorter anyway).
    assert len(finished) >= 4
    assert all(ep.length == 50 for ep, truncated in finished if truncated)
    # Same-step autoreset: ALE starts a new episode's frame stack with three blank frames.
    assert all((o[:3] == 0).all() and o[3].any() for o in done_obs)


def test_atari_scores_are_raw_while_training_rewards_are_clipped():
    # Space Invaders pays 5-30 points per alien, so raw and clipped returns differ quickly.
    def run(clip_rewards):
        env = envs.make_vec_env("atari", "space_invaders", 0, 2, seed=7, clip_rewards=clip_rewards,
                                max_episode_frames=600)
        env.reset(seed=11)
        rng = np.random.default_rng(1)
        rewards, episodes = [], []
        for _ in range(160):
            result = env.step(rng.integers(0, env.num_actions, 2))
            rewards.append(result.rewards)
            episodes += result.episodes
        env.close()
        return np.stack(rewards), episodes

    clipped, clipped_eps = run(True)
    raw, raw_eps = run(False)
    assert raw.max() > 1, "random play should have hit an alien worth more than 1 point"
    np.testing.assert_array_equal(clipped, np.clip(raw, -1, 1))
    assert clipped_eps == raw_eps and len(raw_eps) >= 2
    # 600 frames / frameskip 4: both envs' first episodes are cut at step 150, so each score
    # is the sum of that env's first 150 raw rewards, above the clipped sum.
    assert [ep.length for ep in raw_eps[:2]] == [150, 150]
    scores = np.array([ep.score for ep in raw_eps[:2]])
    np.testing.assert_array_equal(scores, raw[:150].sum(axis=0))
    assert (scores > clipped[:150].sum(axis=0)).any()


def test_atari_full_action_space_and_describe():
    assert envs.describe("atari", "pong") == envs.EnvSpec((4, 84, 84), np.dtype(np.uint8), num_actions=6)
    assert envs.describe("atari", "pong", full_action_space=True).num_actions == 18
    env = envs.make_vec_env("atari", "Pong", 0, 1, seed=0, full_action_space=True)
    assert env.num_actions == 18 and env.sticky_actions == 0.25 and env.num_threads == 1
    env.close()


def test_atari_sticky_actions_reach_the_emulator():
    # With repeat probability 1 the emulator ignores every new action, so random actions play
    # out exactly like all-NOOP; with 0 they do not.
    def frames(sticky, actions):
        env = envs.make_vec_env("atari", "pong", 0, 1, seed=0, sticky_actions=sticky)
        out = [env.reset(seed=5)] + [env.step(np.array([a])).obs for a in actions]
        env.close()
        return np.stack(out)

    actions = np.random.default_rng(0).integers(1, 6, 150)
    noops = np.zeros_like(actions)
    assert np.array_equal(frames(1.0, actions), frames(1.0, noops))
    assert not np.array_equal(frames(0.0, actions), frames(0.0, noops))


# --- gym ---------------------------------------------------------------------------------------


def test_cartpole_episodes_and_same_step_autoreset():
    env = envs.make_vec_env("gym", "CartPole-v1", task_id=1, num_envs=4, seed=0)
    assert (env.observation_shape, env.observation_dtype, env.num_actions) == (
        (4,), np.dtype(np.float32), 2)
    obs = env.reset()
    assert obs.shape == (4, 4) and obs.dtype == np.float32
    finished, done_obs = _step_and_check_lengths(env, 200, np.random.default_rng(0))
    env.close()
    assert len(finished) >= 8  # random CartPole episodes last ~20 steps
    assert all(ep.score == ep.length for ep, _ in finished)  # +1 per step
    # CartPole resets every state variable uniformly in [-0.05, 0.05].
    assert all(np.abs(o).max() <= 0.05 for o in done_obs)


class _MultiDiscreteEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.MultiDiscrete([2, 3])


gym.register("AccordMultiDiscrete-v0", entry_point=_MultiDiscreteEnv)


def test_gym_rejects_unsupported_action_spaces():
    with pytest.raises(ValueError, match="AccordMultiDiscrete-v0.*Discrete and flat Box"):
        envs.make_vec_env("gym", "AccordMultiDiscrete-v0", 0, 2, seed=0)
    with pytest.raises(ValueError, match="AccordMultiDiscrete-v0.*Discrete and flat Box"):
        envs.describe("gym", "AccordMultiDiscrete-v0")


def test_caller_mistakes_raise_instead_of_counting_as_env_errors():
    env = envs.make_vec_env("gym", "CartPole-v1", 0, 2, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0, 1]))
    env.reset()
    with pytest.raises(ValueError, match="actions"):
        env.step(np.array([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.array([0]))
    assert env.env_errors == 0
    env.close()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0, 1]))


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["breakout", "Breakout", "BreakoutNoFrameskip-v4", "ALE/Breakout-v5"])
def test_atari_names_normalise(name):
    envs.validate_task("atari", name)
    assert envs.normalize_task("atari", name) == "breakout"


def test_validate_task_names_the_bad_task():
    with pytest.raises(ValueError, match="'breakot'.*'breakout'"):
        envs.validate_task("atari", "breakot")
    with pytest.raises(ValueError, match="CartPol-v1"):
        envs.validate_task("gym", "CartPol-v1")
    with pytest.raises(ValueError, match="unknown env kind 'mujoco'"):
        envs.validate_task("mujoco", "x")


def test_task_names_canonicalises_and_rejects_duplicates():
    assert envs.task_names("atari", ["Pong", "MsPacmanNoFrameskip-v4"]) == ["pong", "ms_pacman"]
    with pytest.raises(ValueError, match="repeats"):
        envs.task_names("atari", ["pong", "PongNoFrameskip-v4"])


# --- an env that raises ------------------------------------------------------------------------


class _FailingEnv(gym.Env):
    """Counts up; raises on its ``fail_at``-th step since construction."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, fail_at: int = 5):
        self.fail_at, self.steps, self.t = fail_at, 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("simulator crashed")
        self.t += 1
        return np.full(2, self.t, np.float32), 1.0, False, False, {}


gym.register("AccordFailing-v0", entry_point=_FailingEnv)


def test_env_that_raises_is_rebuilt_and_reported_as_truncation():
    env = envs.make_vec_env("gym", "AccordFailing-v0", 0, 3, seed=0)
    env.reset()
    for _ in range(4):
        result = env.step(np.zeros(3, dtype=np.int64))
    assert result.obs[0, 0] == 4 and env.env_errors == 0

    result = env.step(np.zeros(3, dtype=np.int64))  # the 5th step raises
    assert env.env_errors == 1
    assert result.truncated.all() and not result.terminated.any()
    assert (result.rewards == 0).all() and result.episodes == []
    assert (result.obs == 0).all()  # fresh reset observations

    result = env.step(np.zeros(3, dtype=np.int64))  # the rebuilt envs run on
    assert (result.obs == 1).all() and not result.truncated.any()
    env.close()


def test_env_that_always_raises_gives_up_with_a_clear_error():
    env = envs.make_vec_env("gym", "AccordFailing-v0", 0, 2, seed=0, env_kwargs={"fail_at": 1})
    env.reset()
    for _ in range(env.max_consecutive_errors):
        assert env.step(np.zeros(2, dtype=np.int64)).truncated.all()
    with pytest.raises(RuntimeError, match="consecutive") as info:
        env.step(np.zeros(2, dtype=np.int64))
    assert isinstance(info.value.__cause__, RuntimeError)  # the env's own error is chained
    env.close()
