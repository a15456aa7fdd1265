"""envs/gridworld.py and envs/gridworld_teacher.py: paper 000's gridworlds (App. F)."""
from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.gridworld import (BIG_REWARD, NUM_ACTIONS, OBS_SIZE, SIZE, VIEW_RADIUS, GridWorld,
                            parse_task, sample_world, world_for_task)
from envs.gridworld_teacher import teacher_probs, train_teacher

UP, RIGHT, DOWN, LEFT = range(4)


def open_world(noise=0.1, end_probability=0.01, **cells) -> GridWorld:
    """No walls, no rewards, start in the middle; ``cells`` name=(r, c) add features."""
    walls = np.zeros((SIZE, SIZE), dtype=bool)
    rewards = np.zeros((SIZE, SIZE))
    terminal = np.zeros((SIZE, SIZE), dtype=bool)
    for r, c in cells.get("walls", []):
        walls[r, c] = True
    for (r, c), value, terminates in cells.get("rewards", []):
        rewards[r, c], terminal[r, c] = value, terminates
    return GridWorld(walls, rewards, terminal, (7, 7), noise, end_probability)


def at(*cells) -> np.ndarray:
    return np.array(cells, dtype=np.int64)


def test_walls_and_the_border_block_moves():
    world = open_world(noise=0.0, end_probability=0.0, walls=[(7, 8)])
    rng = np.random.default_rng(0)
    out = world.step(at((7, 7), (7, 7), (0, 3), (4, 14)), np.array([RIGHT, UP, UP, RIGHT]), rng)
    assert out.pos.tolist() == [[7, 7], [6, 7], [0, 3], [4, 14]]
    assert not out.terminated.any()


def test_noise_moves_one_in_ten_steps_another_way():
    world = open_world(noise=0.1, end_probability=0.0)
    n = 40_000
    out = world.step(np.tile(at((7, 7)), (n, 1)), np.full(n, UP), np.random.default_rng(1))
    moved_up = (out.pos == [6, 7]).all(axis=1)
    assert abs((~moved_up).mean() - 0.1) < 0.006  # 6 sigma of a binomial(40000, 0.1) is 0.009
    for other in ((7, 8), (8, 7), (7, 6)):  # each other direction takes a third of the noise
        assert abs((out.pos == other).all(axis=1).mean() - 0.1 / 3) < 0.006


def test_terminating_rewards_end_the_episode_and_others_do_not():
    world = open_world(noise=0.0, end_probability=0.0, rewards=[
        ((6, 7), 5.0, True), ((7, 8), 10.0, True), ((8, 7), -1.0, False), ((7, 6), -3.0, True)])
    out = world.step(np.tile(at((7, 7)), (4, 1)), np.array([UP, RIGHT, DOWN, LEFT]), np.random.default_rng(0))
    assert out.reward.tolist() == [5.0, 10.0, -1.0, -3.0]
    assert out.terminated.tolist() == [True, True, False, True]


def test_the_random_end_has_chance_one_in_a_hundred_and_pays_nothing():
    # The agents stand on a penalty cell: an end that paid the cell's reward would show.
    world = open_world(noise=0.1, end_probability=0.01, rewards=[((6, 7), -1.0, False)])
    n = 200_000
    start = np.tile(at((6, 7)), (n, 1))
    out = world.step(start, np.full(n, UP), np.random.default_rng(2))
    assert abs(out.ended_by_chance.mean() - 0.01) < 0.0015  # 6 sigma is 0.0013
    assert (out.pos[out.ended_by_chance] == [6, 7]).all()
    assert (out.reward[out.ended_by_chance] == 0).all()
    assert (out.terminated == out.ended_by_chance).all()  # nothing else terminates here


def test_main_task_removes_the_big_rewards_and_keeps_the_layout():
    for seed in range(5):
        aux, main = world_for_task(f"world-{seed}"), world_for_task(f"World-{seed}-main ")
        big = aux.rewards == BIG_REWARD
        assert big.sum() == 2 and aux.terminal[big].all()
        assert not (main.rewards == BIG_REWARD).any() and not main.terminal[big].any()
        assert (main.rewards[big] == 0).all()
        np.testing.assert_array_equal(main.walls, aux.walls)
        np.testing.assert_array_equal(main.rewards[~big], aux.rewards[~big])
        assert (main.rewards == 5.0).sum() == 2 and main.start == aux.start


def test_worlds_are_seeded_and_differ_between_seeds():
    a, b, c = sample_world(11), sample_world(11), sample_world(12)
    np.testing.assert_array_equal(a.walls, b.walls)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    assert not np.array_equal(a.walls, c.walls)


def test_observation_is_the_window_of_cells_up_to_four_away():
    world = sample_world(5)
    cells = at((0, 0), world.start, (14, 9), (7, 13))
    obs = world.observe(cells)
    assert obs.shape == (4, OBS_SIZE) and obs.dtype == np.float32
    for o, (r, c) in zip(obs.reshape(4, 3, 9, 9), cells):
        for i, dr in enumerate(range(-VIEW_RADIUS, VIEW_RADIUS + 1)):
            for j, dc in enumerate(range(-VIEW_RADIUS, VIEW_RADIUS + 1)):
                rr, cc = r + dr, c + dc
                inside = 0 <= rr < SIZE and 0 <= cc < SIZE
                assert o[0, i, j] == (1.0 if not inside else float(world.walls[rr, cc]))
                assert o[1, i, j] == pytest.approx(world.rewards[rr, cc] / 10 if inside else 0.0)
                assert o[2, i, j] == (float(world.terminal[rr, cc]) if inside else 0.0)


def test_vec_env_contract_seeding_and_autoreset():
    spec = envs.describe("gridworld", "world-3-main")
    assert spec.obs_shape == (OBS_SIZE,) and spec.num_actions == NUM_ACTIONS
    runs = []
    for _ in range(2):
        env = envs.make_vec_env("gridworld", "world-3", task_id=0, num_envs=8, seed=4)
        first = env.reset(seed=9)
        start_obs = first[0].copy()
        actions = np.random.default_rng(0).integers(0, 4, (400, 8))
        steps = [env.step(a) for a in actions]
        runs.append(np.stack([s.obs for s in steps]))
        env.close()
    np.testing.assert_array_equal(runs[0], runs[1])
    ended = [(s, i) for s in steps for i in np.flatnonzero(s.terminated)]
    assert len(ended) > 10
    for s, i in ended:  # same-step autoreset: obs is the start, final_obs the last cell
        np.testing.assert_array_equal(s.obs[i], start_obs)
        if s.rewards[i] > 0:  # ended on a rewarding cell: final_obs shows it under the agent
            assert s.final_obs[i].reshape(3, 9, 9)[2, VIEW_RADIUS, VIEW_RADIUS] == 1.0
    assert BIG_REWARD in {float(s.rewards[i]) for s, i in ended}
    assert sum(len(s.episodes) for s in steps) == len(ended)


def test_main_task_env_never_pays_the_big_reward():
    env = envs.make_vec_env("gridworld", "world-3-main", task_id=0, num_envs=16, seed=4)
    env.reset()
    rng = np.random.default_rng(0)
    rewards = np.stack([env.step(rng.integers(0, 4, 16)).rewards for _ in range(1500)])
    assert 5.0 in rewards and BIG_REWARD not in rewards


def test_unknown_task_names_are_rejected():
    with pytest.raises(ValueError, match="world-x"):
        envs.validate_task("gridworld", "world-x")
    assert parse_task("world-12-main") == (12, True)


def run_episodes(world, policy, episodes=400, seed=3):
    """Fraction of episodes that end on a +10 cell, from the start."""
    rng = np.random.default_rng(seed)
    pos = np.tile(np.array(world.start), (episodes, 1))
    alive = np.ones(episodes, dtype=bool)
    big = np.zeros(episodes, dtype=bool)
    while alive.any():
        out = world.step(pos, policy(pos, rng), rng)
        big |= alive & out.terminated & (out.reward == BIG_REWARD)
        alive &= ~out.terminated
        pos = out.pos
    return big.mean()


def test_teacher_greedy_policy_reaches_the_big_reward_more_often_than_random():
    world = sample_world(3)
    q = train_teacher(world, transitions=150_000, seed=0)
    greedy = run_episodes(world, lambda pos, rng: teacher_probs(q, pos).argmax(axis=1))
    uniform = run_episodes(world, lambda pos, rng: rng.integers(0, NUM_ACTIONS, len(pos)))
    assert greedy > uniform + 0.3, (greedy, uniform)


def test_teacher_probabilities():
    q = np.zeros((SIZE, SIZE, NUM_ACTIONS))
    q[2, 3] = [1.0, 3.0, 3.0, 0.0]
    np.testing.assert_allclose(teacher_probs(q, at(2, 3)), [0, 0.5, 0.5, 0])  # ties split
    soft = teacher_probs(q, at((2, 3), (0, 0)), temperature=2.0)
    expected = np.exp(q[2, 3] / 2.0) / np.exp(q[2, 3] / 2.0).sum()
    np.testing.assert_allclose(soft, [expected, [0.25] * 4])
    with pytest.raises(ValueError, match="temperature"):
        teacher_probs(q, at(2, 3), temperature=-1.0)


def test_the_env_holds_the_tabular_teachers_of_both_worlds():
    from envs.gridworld import GridWorldVecEnv
    from envs.gridworld_teacher import world_q

    env = GridWorldVecEnv("world-2-main", 0, 6, seed=0)
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.arange(6) % NUM_ACTIONS)
    pos = env.positions
    q_aux, q_main = world_q(2, "q_aux"), world_q(2, "q_main")
    assert not np.array_equal(q_aux, q_main)   # T_main lacks the +10 rewards
    np.testing.assert_allclose(env.teacher_probs("q_aux", 0.5), teacher_probs(q_aux, pos, 0.5), rtol=1e-6)
    np.testing.assert_allclose(env.teacher_probs("q_main", 0.0), teacher_probs(q_main, pos, 0.0), rtol=1e-6)
    # The adversarial teacher is greedy on -Q: the worst action of each cell.
    worst = env.teacher_probs("q_main", 0.0, invert=True)
    values = q_main[pos[:, 0], pos[:, 1]]
    assert np.all(worst[np.arange(6), values.argmin(1)] > 0)
    with pytest.raises(ValueError, match="q_aux"):
        env.teacher_probs("q_other")


def test_rollouts_record_the_teacher_at_the_cell_of_each_observation():
    """teacher_probs/<name>[t] is the teacher's policy at the agent's cell when obs[t] was seen."""
    import torch

    from accord.config import config_from_dict
    from actors.rollout import RolloutWorker
    from envs.gridworld_teacher import world_q

    T, M = 6, 4
    cfg = config_from_dict({
        "env": {"kind": "gridworld", "tasks": ["world-2-main"], "envs_per_actor": M},
        "actors": {"num_actors": 1, "unroll_length": T},
        "learner": {"batch_size": M, "aux": {"good": {"kind": "distill", "teacher": "q_main",
                                                       "temperature": 0.0}}},
    })
    worker = RolloutWorker(cfg, 0, envs.describe("gridworld", "world-2-main"))
    cells, step = [], worker.env.step

    def spy(actions):
        cells.append(worker.env.positions)
        return step(actions)

    worker.env.step = spy
    torch.manual_seed(0)
    for _ in range(2):   # the second unroll continues the first
        cells.clear()
        unroll = worker.unroll()
        recorded = unroll["teacher_probs/good"]
        assert recorded.shape == (T, M, NUM_ACTIONS) and recorded.dtype == np.float32
        for t in range(T):
            np.testing.assert_allclose(recorded[t], teacher_probs(world_q(2, "q_main"), cells[t], 0.0))
