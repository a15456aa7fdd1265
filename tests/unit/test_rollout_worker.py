"""`RolloutWorker.unroll` on a scripted env whose observations encode (seed, episode, t, step):
obs[t], actions[t], behaviour logits[t] and rewards[t] line up, obs[T] carries into the next
unroll, episode ends and statistics are where the env put them, the version stamp follows the
weights, and a restarted worker (another `reseed`) gets other env seeds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accord.config import config_from_dict
from actors.rollout import RolloutWorker, env_options, episode_row
from envs import EpisodeStats, describe
from tests.support.scripted_env import SEED_MOD, TASK
from tests.support.weights import random_weights

T, M, RUN_SEED = 6, 3, 5
NUM_ACTORS = 4     # one task each: actor i's M env copies come after actor i-1's


def make_worker(actor_index: int = 0, reseed: int = 0, tasks=(TASK,), heads: bool = False):
    cfg = config_from_dict({
        "env": {"kind": "gym", "tasks": list(tasks), "envs_per_actor": M},
        "actors": {"num_actors": NUM_ACTORS, "unroll_length": T},
        "learner": {"model": "mlp", "batch_size": M, "per_task_heads": heads},
        "run": {"seed": RUN_SEED},
    })
    return RolloutWorker(cfg, actor_index, describe("gym", TASK), reseed)


def env_seed(actor_index: int, reseed: int, run_seed: int = RUN_SEED) -> int:
    return (run_seed * 100_003 + (reseed * NUM_ACTORS + actor_index) * M) % 2**31


def test_each_step_records_the_obs_action_reward_and_logits_of_that_step():
    worker = make_worker()
    worker.set_weights(3, random_weights(worker.model, 0))
    u = worker.unroll()
    obs, actions = u["obs"], u["actions"]
    assert obs.shape == (T + 1, M, 4) and actions.shape == (T, M)
    # The scripted reward is 10 * (step counter of the observation acted on) + the action.
    np.testing.assert_array_equal(u["rewards"], 10 * obs[:-1, :, 3] + actions)
    np.testing.assert_array_equal(obs[1:, :, 3], obs[:-1, :, 3] + 1)
    with torch.no_grad():
        for t in range(T):
            logits, _ = worker.model(torch.from_numpy(obs[t]), torch.zeros(M, dtype=torch.int64))
            np.testing.assert_allclose(u["behaviour_logits"][t], logits.numpy(), rtol=1e-6)
    assert u["behaviour_logits"].dtype == np.float32 and u["rewards"].dtype == np.float32


def test_episode_ends_are_flagged_on_the_step_that_ended_them():
    worker = make_worker()
    u = worker.unroll()
    obs = u["obs"]
    episode, t_in = obs[..., 1], obs[..., 2]
    ended = (t_in[1:] == 0)  # the next observation is a fresh episode's first
    np.testing.assert_array_equal(episode[1:], episode[:-1] + ended)
    even = episode[:-1] % 2 == 0  # the scripted env terminates even episodes, truncates odd ones
    np.testing.assert_array_equal(u["terminated"], ended & even)
    np.testing.assert_array_equal(u["truncated"], ended & ~even)
    assert u["terminated"].any() and u["truncated"].any()


def test_episode_statistics_are_the_scores_and_lengths_of_the_episodes_that_ended():
    worker = make_worker()
    unrolls = [worker.unroll() for _ in range(2)]  # some episodes span the two unrolls
    score, length = np.zeros(M), np.zeros(M, dtype=int)
    for u in unrolls:
        expected = []
        for t in range(T):
            score += u["rewards"][t]
            length += 1
            for m in np.flatnonzero(u["terminated"][t] | u["truncated"][t]):
                expected.append((0, score[m], length[m]))
                score[m], length[m] = 0.0, 0
        rows = u["episodes"]
        assert rows.shape == (len(expected), 4) and len(expected) > 0
        np.testing.assert_array_equal(rows[:, :3], expected)
        assert np.isnan(rows[:, 3]).all()  # the scripted env reports no success


def test_the_last_observation_starts_the_next_unroll_and_steps_are_counted():
    worker = make_worker()
    first, second = worker.unroll(), worker.unroll()
    np.testing.assert_array_equal(second["obs"][0], first["obs"][T])
    np.testing.assert_array_equal(second["obs"][:, :, 3], np.arange(T, 2 * T + 1)[:, None].repeat(M, 1))
    assert worker.steps == 2 * T * M


def test_the_version_stamp_is_that_of_the_weights_that_acted():
    worker = make_worker()
    assert worker.unroll()["version"] == -1  # no weights received yet
    worker.set_weights(7, random_weights(worker.model, 1))
    u7 = worker.unroll()
    worker.set_weights(8, random_weights(worker.model, 2))
    u8 = worker.unroll()
    assert (u7["version"], u8["version"]) == (7, 8)
    with torch.no_grad():
        logits, _ = worker.model(torch.from_numpy(u8["obs"][0]), torch.zeros(M, dtype=torch.int64))
    np.testing.assert_allclose(u8["behaviour_logits"][0], logits.numpy(), rtol=1e-6)
    assert not np.allclose(u7["behaviour_logits"][-1], u8["behaviour_logits"][0])


def test_actions_are_drawn_from_the_behaviour_policy():
    worker = make_worker()
    weights = {k: np.zeros_like(v) for k, v in random_weights(worker.model, 0).items()}
    worker.set_weights(0, weights)  # all logits 0: a uniform policy
    actions = np.concatenate([worker.unroll()["actions"].ravel() for _ in range(5)])
    assert set(actions.tolist()) == {0, 1, 2}
    bias = next(k for k in weights if k.startswith("heads.0.") and k.endswith("bias"))
    weights[bias][1] = 40.0  # action 1 all but certain
    worker.set_weights(1, weights)
    assert (worker.unroll()["actions"] == 1).all()


def test_a_worker_acts_for_its_task_with_that_task_head():
    tasks = ("CartPole-v1", TASK)
    worker = make_worker(actor_index=3, tasks=tasks, heads=True)  # 3 % 2: task 1
    worker.set_weights(0, random_weights(worker.model, 3))
    u = worker.unroll()
    np.testing.assert_array_equal(u["task_id"], [1] * M)
    assert (u["episodes"][:, 0] == 1).all() and len(u["episodes"]) > 0
    with torch.no_grad():
        obs = torch.from_numpy(u["obs"][0])
        own, _ = worker.model(obs, torch.ones(M, dtype=torch.int64))
        other, _ = worker.model(obs, torch.zeros(M, dtype=torch.int64))
    np.testing.assert_allclose(u["behaviour_logits"][0], own.numpy(), rtol=1e-6)
    assert not np.allclose(own.numpy(), other.numpy())


@pytest.mark.parametrize("actor_index,reseed", [(0, 0), (1, 0), (0, 1), (2, 3)])
def test_env_seeds_follow_the_actor_index_and_the_reseed_after_a_restart(actor_index, reseed):
    worker = make_worker(actor_index=actor_index, reseed=reseed, tasks=(TASK,) * 1)
    u = worker.unroll()
    seed = env_seed(actor_index, reseed)
    expected = (seed + np.arange(M)) % SEED_MOD  # gymnasium seeds copy i with seed + i
    np.testing.assert_array_equal(u["obs"][:, :, 0], np.broadcast_to(expected, (T + 1, M)))


def test_a_restarted_worker_does_not_replay_the_first_actions():
    first = make_worker(reseed=0)
    again = make_worker(reseed=0)
    restarted = make_worker(reseed=1)
    for w in (first, again, restarted):
        w.set_weights(0, {k: np.zeros_like(v) for k, v in random_weights(w.model, 0).items()})
    a, b, c = (np.concatenate([w.unroll()["actions"].ravel() for _ in range(3)])
               for w in (first, again, restarted))
    np.testing.assert_array_equal(a, b)  # the same seed replays exactly
    assert not np.array_equal(a, c)


def test_seeds_wrap_into_int32_for_large_run_seeds():
    worker = make_worker(actor_index=1)
    # 30_000 * 100_003 lies in [2**31, 2**32): a wrap at 2**32 (or none) would keep it.
    big = config_from_dict({**worker.cfg.model_dump(), "run": {"seed": 30_000}})
    u = RolloutWorker(big, 1, describe("gym", TASK), 2).unroll()
    seed = env_seed(1, 2, run_seed=30_000)
    np.testing.assert_array_equal(u["obs"][0, :, 0], (seed + np.arange(M)) % SEED_MOD)
    assert worker.actor_index == 1


def test_a_first_start_is_reseed_zero():
    cfg = make_worker().cfg
    fresh = RolloutWorker(cfg, 1, describe("gym", TASK)).unroll()["obs"][0, :, 0]
    np.testing.assert_array_equal(fresh, (env_seed(1, 0) + np.arange(M)) % SEED_MOD)


def test_an_env_rebuilt_after_an_error_is_reseeded_from_the_worker_seed():
    seeds = []
    for _ in range(2):
        worker = make_worker(actor_index=2)
        worker.unroll()
        # What the env does when a step raises: rebuild, reset with the next derived seed.
        result = worker.env._recover(RuntimeError("scripted failure"))
        assert result.truncated.all()
        seeds.append(result.obs[:, 0])
    np.testing.assert_array_equal(seeds[0], seeds[1])  # reproducible from the one seed
    assert not np.array_equal(seeds[0], (env_seed(2, 0) + np.arange(M)) % SEED_MOD)


def test_episode_rows_carry_success_where_the_env_reports_it():
    assert episode_row(EpisodeStats(2, "t", 5.5, 7, success=1.0)) == (2, 5.5, 7, 1.0)
    assert episode_row(EpisodeStats(2, "t", 5.5, 7, success=0.0))[3] == 0.0
    assert np.isnan(episode_row(EpisodeStats(1, "t", 3.0, 4))[3])


def test_atari_options_reach_the_env():
    cfg = config_from_dict({
        "env": {"kind": "atari", "tasks": ["pong"], "envs_per_actor": 1, "full_action_space": True,
                "sticky_actions": 0.0, "clip_rewards": False, "max_episode_frames": 1000},
        "actors": {"num_actors": 1, "unroll_length": 2},
        "learner": {"model": "nature", "batch_size": 1},
    })
    assert env_options(cfg) == {"full_action_space": True, "sticky_actions": 0.0,
                                "clip_rewards": False, "max_episode_frames": 1000}
    assert env_options(make_worker().cfg) == {}
    worker = RolloutWorker(cfg, 0, describe("atari", "pong", **env_options(cfg)))
    try:
        assert worker.env.num_actions == 18  # the full action space, not Pong's 6
    finally:
        worker.close()


def test_no_two_env_copies_of_a_fleet_share_a_seed_across_actors_and_restarts():
    seeds = [make_worker(actor_index=i, reseed=r).unroll()["obs"][0, :, 0]
             for i in range(NUM_ACTORS) for r in range(3)]
    flat = np.concatenate(seeds).astype(int).tolist()
    assert len(flat) == NUM_ACTORS * 3 * M and len(set(flat)) == len(flat)


@pytest.mark.parametrize("benchmark,tasks,one_hot", [("MT1", ["reach-v3"], 0), ("MT10", None, 10)])
def test_metaworld_options_name_the_benchmark_and_its_task_one_hot(benchmark, tasks, one_hot):
    env = {"kind": "metaworld", "benchmark": benchmark, **({"tasks": tasks} if tasks else {})}
    cfg = config_from_dict({"env": env, "learner": {"algorithm": "sac"}})
    assert env_options(cfg) == {"benchmark": benchmark, "task_one_hot": one_hot}
