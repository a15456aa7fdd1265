"""`TransitionWorker.collect` (SAC's rollout) on a scripted env whose observations encode
(seed, episode, t, step): rows are step-major and s_t, a_t, r_t, s_{t+1} line up, s_{t+1} at an
episode end is the episode's own last observation, only termination is flagged as terminated,
the next chunk starts where the last one stopped, the version and task columns follow the
weights and the actor's tasks, and the policy acts uniformly until the first update."""
from __future__ import annotations

import numpy as np
import torch

from accord.config import config_from_dict
from actors.policy import GaussianPolicy
from actors.transitions import TransitionWorker
from envs import describe
from tests.support.scripted_env import BOX_TASK, BOX_TASKS, SEED_MOD, episode_length
from tests.support.weights import random_weights

T, M, RUN_SEED = 5, 3, 7
SPEC = describe("gym", BOX_TASK)


def make_worker(tasks=(BOX_TASK,), actor_index: int = 0, reseed: int | None = 0,
                num_actors: int = 1, model: str = "mtsac", envs_per_actor: int = M):
    cfg = config_from_dict({
        "env": {"kind": "gym", "tasks": list(tasks), "envs_per_actor": envs_per_actor},
        "actors": {"num_actors": num_actors, "unroll_length": T},
        "learner": {"model": "mlp", "algorithm": "sac", "sac": {"model": model, "hidden": [8, 8]}},
        "run": {"seed": RUN_SEED},
    })
    spec = describe("gym", BOX_TASK, task_one_hot=len(tasks) if len(tasks) > 1 else 0)
    if reseed is None:      # as Ray's first start calls it
        return TransitionWorker(cfg, actor_index, spec)
    return TransitionWorker(cfg, actor_index, spec, reseed)


def test_rows_are_step_major_and_each_transition_lines_up():
    worker = make_worker()
    c = worker.collect()
    N = T * M
    assert c["obs"].shape == c["next_obs"].shape == (N, 4) and c["action"].shape == (N, 2)
    assert c["reward"].shape == c["terminated"].shape == c["truncated"].shape == (N,)
    obs, nxt = c["obs"], c["next_obs"]
    # Row t*M + m is env m at step t: each env's step counter rises by one per row block.
    steps = obs[:, 3].reshape(T, M)
    np.testing.assert_array_equal(steps, steps[0] + np.arange(T)[:, None])
    assert len({int(s) for s in obs[:M, 0]}) == M       # M distinct env copies
    # r_t pins a_t to s_t; s_{t+1} is one step on, in the same episode.
    np.testing.assert_allclose(c["reward"], 10 * obs[:, 3] + c["action"][:, 0] + c["action"][:, 1] / 4,
                               rtol=1e-6)
    np.testing.assert_array_equal(nxt[:, 3], obs[:, 3] + 1)
    np.testing.assert_array_equal(nxt[:, 1], obs[:, 1])
    np.testing.assert_array_equal(nxt[:, 2], obs[:, 2] + 1)
    for name in ("obs", "next_obs", "action", "reward"):
        assert c[name].dtype == np.float32, name


def test_an_episode_end_keeps_its_own_last_observation_and_flags_only_termination():
    worker = make_worker()
    c = worker.collect()
    obs, nxt = c["obs"], c["next_obs"]
    lengths = np.array([episode_length(int(s) % SEED_MOD, int(e)) for s, e in obs[:, :2]])
    ended = nxt[:, 2] == lengths
    even = obs[:, 1] % 2 == 0     # the scripted env terminates even episodes, truncates odd ones
    np.testing.assert_array_equal(c["terminated"], ended & even)
    np.testing.assert_array_equal(c["truncated"], ended & ~even)
    assert c["terminated"].any() and c["truncated"].any()
    # Where the episode went on, s_{t+1} is the next row's s_t; where it ended, the next row
    # starts a fresh episode that s_{t+1} is not.
    going_on = ~ended[:-M]
    np.testing.assert_array_equal(nxt[:-M][going_on], obs[M:][going_on])
    np.testing.assert_array_equal(obs[M:][ended[:-M], 2], 0)


def test_the_next_chunk_starts_where_the_last_one_stopped():
    worker = make_worker()
    first, second = worker.collect(), worker.collect()
    last, start = first["next_obs"][-M:], second["obs"][:M]
    ended = first["terminated"][-M:] | first["truncated"][-M:]
    np.testing.assert_array_equal(start[~ended], last[~ended])
    np.testing.assert_array_equal(start[:, 3], last[:, 3])     # the step counter runs on
    np.testing.assert_array_equal(start[ended, 2], 0)
    assert worker.steps == 2 * T * M


def test_episode_rows_are_the_scores_and_lengths_of_the_episodes_that_ended():
    worker = make_worker()
    chunks = [worker.collect() for _ in range(3)]
    score, length, expected = np.zeros(M), np.zeros(M, dtype=int), []
    for c in chunks:
        rows = c["episodes"]
        assert rows.dtype == np.float64 and rows.shape[1:] == (4,)
        ends = (c["terminated"] | c["truncated"]).reshape(T, M)
        got = []
        for t in range(T):
            score += c["reward"].reshape(T, M)[t]
            length += 1
            for m in np.flatnonzero(ends[t]):
                got.append((0.0, score[m], length[m]))
                score[m], length[m] = 0.0, 0
        np.testing.assert_allclose(rows[:, :3], np.array(got).reshape(-1, 3), rtol=1e-5)
        assert np.isnan(rows[:, 3]).all()     # a gym env reports no success
        expected += got
    assert len(expected) >= 4


def test_the_version_column_and_the_actions_follow_the_weights():
    worker = make_worker()
    warm = worker.collect()
    assert (warm["version"] == -1).all() and warm["version"].dtype == np.int64
    # Warm-up: uniform in [-1, 1]^A, whatever the (untrained) network would do.
    assert (np.abs(warm["action"]) <= 1).all() and warm["action"].std() > 0.3
    weights = random_weights(worker.policy.model, 1, scale=0.3)
    worker.set_weights(4, weights)
    assert worker.version == 4
    state = worker.policy.model.state_dict()
    assert all(torch.equal(state[k], torch.as_tensor(v)) for k, v in weights.items())
    chunk = worker.collect()
    assert (chunk["version"] == 4).all()
    # The same weights and the same generator state act the same: the network chose a_t.
    twin = GaussianPolicy(worker.cfg, SPEC, seed=0)
    twin.set_weights(4, weights)
    twin.generator.set_state(_generator_before_second_chunk(weights))
    actions = np.concatenate([twin.act(chunk["obs"][t * M:(t + 1) * M], torch.zeros(M, dtype=torch.int64))
                              for t in range(T)])
    np.testing.assert_allclose(chunk["action"], actions, rtol=1e-6, atol=1e-7)


def _generator_before_second_chunk(weights) -> torch.Tensor:
    """The policy generator's state after one warm-up chunk of a fresh worker: a twin worker
    replays the first chunk to get there."""
    twin = make_worker()
    twin.collect()
    return twin.policy.generator.get_state()


def test_a_version_zero_policy_still_warms_up_and_deterministic_acts_from_the_network():
    worker = make_worker()
    worker.set_weights(0, random_weights(worker.policy.model, 2, scale=0.3))
    obs = worker.collect()["obs"][:M]
    assert worker.policy.warming_up
    greedy = worker.policy.act(obs, torch.zeros(M, dtype=torch.int64), deterministic=True)
    again = worker.policy.act(obs, torch.zeros(M, dtype=torch.int64), deterministic=True)
    np.testing.assert_array_equal(greedy, again)       # tanh(mean): no sampling
    with torch.no_grad():
        expected = worker.policy.model.act(torch.from_numpy(obs), torch.zeros(M, dtype=torch.int64),
                                           deterministic=True)
    np.testing.assert_allclose(greedy, expected.numpy(), rtol=1e-6)


def test_a_multitask_actor_stamps_each_row_with_its_task_and_a_one_hot():
    tasks = BOX_TASKS[:2]
    worker = make_worker(tasks, num_actors=1)
    c = worker.collect()
    np.testing.assert_array_equal(c["task_id"], np.tile(np.repeat([0, 1], M), T))
    assert c["obs"].shape == (T * 2 * M, 4 + 2) and c["task_id"].dtype == np.int64
    np.testing.assert_array_equal(c["obs"][:, 4:], np.eye(2, dtype=np.float32)[c["task_id"]])
    np.testing.assert_array_equal(c["next_obs"][:, 4:], c["obs"][:, 4:])
    assert worker.task_id == 0


def test_no_two_env_copies_of_a_fleet_share_a_seed_across_actors_and_restarts():
    """Three tasks on two actors: actor 0 steps tasks 0 and 2 (2M copies), actor 1 task 1."""
    seeds = []
    for reseed in (0, 1):
        for actor_index in (0, 1):
            worker = make_worker(BOX_TASKS, actor_index, reseed, num_actors=2)
            seeds += worker.collect()["obs"][:worker.env.num_envs, 0].astype(int).tolist()
    assert len(seeds) == 2 * 3 * M and len(set(seeds)) == len(seeds)
    first = make_worker(BOX_TASKS, 0, 0, num_actors=2).collect()["obs"][:2 * M, 0]
    np.testing.assert_array_equal(first, (RUN_SEED * 100_003 + np.arange(2 * M)) % SEED_MOD)


def test_a_first_start_is_reseed_zero():
    fresh, zero = make_worker(actor_index=1, reseed=None, num_actors=2), make_worker(actor_index=1, num_actors=2)
    np.testing.assert_array_equal(fresh.collect()["obs"], zero.collect()["obs"])
    assert fresh.actor_index == 1


def test_task_heads_act_on_each_rows_own_task():
    """With one policy head per task (`multihead`), row m of a two-task actor acts with head
    task_id[m]; one env per task, so the actor's first task is its first env's."""
    worker = make_worker(BOX_TASKS[:2], model="multihead", envs_per_actor=1)
    assert worker.task_id == 0 and worker.env.task_ids.tolist() == [0, 1]
    weights = random_weights(worker.policy.model, 3, scale=0.3)
    worker.set_weights(2, weights)
    twin = GaussianPolicy(worker.cfg, describe("gym", BOX_TASK, task_one_hot=2), seed=0)
    twin.set_weights(2, weights)
    obs, state = worker.obs, worker.policy.generator.get_state()
    chunk = worker.collect()
    twin.generator.set_state(state)
    np.testing.assert_allclose(chunk["action"][:2], twin.act(obs, torch.tensor([0, 1])), rtol=1e-6)
    twin.generator.set_state(state)    # the same noise through task 0's head for both rows
    assert not np.allclose(chunk["action"][:2], twin.act(obs, torch.tensor([0, 0])))
