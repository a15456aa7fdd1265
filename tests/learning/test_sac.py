"""SAC through the real CLI, rollout actors, replay table and learner, budgeted in env steps:
Pendulum-v1 must learn, and the cheap multi-task point-goal tasks must improve with `sum` and
with `pcgrad`."""
import functools

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the PointGoal tasks)

from tests.support.training_runs import train

pytestmark = pytest.mark.learning

HANG_GUARD = 900  # seconds; the budgets are env steps


# Random actions score about -1,200 on Pendulum-v1; a learned swing-up about -150 to -250. The
# run's own first rows are no baseline (they may hold learned episodes): the target is absolute.
PENDULUM_TARGET = -400.0


def test_sac_learns_pendulum(tmp_path, ray_address):
    run = train(tmp_path, "configs/pendulum_sac.yaml", "run.total_frames=10000",
                address=ray_address, hang_guard=HANG_GUARD)
    # The run ends with an evaluation of the deterministic policy on fresh episodes.
    final = run.series("eval/return/Pendulum-v1")[-1]
    assert final >= PENDULUM_TARGET, f"evaluated return {final} after {run.rows[-1]['frames']} steps"
    alphas = run.series("sac/alpha/Pendulum-v1")
    assert alphas and alphas[-1] < 1.0  # the temperature was learned down from its initial 1.0


POINT_GOAL_TASKS = ("PointGoal-NE-v0", "PointGoal-NW-v0", "PointGoal-SW-v0", "PointGoal-SE-v0")
# Uniform random actions score about -52 per 50-step episode on each task (measured below);
# reaching the goal and staying there about -4. A run must gain at least MARGIN over a random
# policy on the mean over the tasks, and half of it on each task.
MARGIN = 30.0


@functools.cache  # the same floor for every combiner's run
def random_policy_return(task: str, episodes: int = 200) -> float:
    """The mean episode return of uniform random actions on `task`: the floor a run is measured
    from (a run's own first logged episodes are no floor: they may already be learned ones)."""
    env = gym.make(task)
    env.action_space.seed(0)
    returns = []
    for episode in range(episodes):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + reward, terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_multitask_sac_improves_every_point_goal_task(tmp_path, ray_address, combiner):
    run = train(tmp_path, "configs/point_goal_sac.yaml", "run.total_frames=6000",
                f"learner.combiner.name={combiner}", "learner.combiner.options={seed: 0}"
                if combiner == "pcgrad" else "learner.combiner.options={}",
                address=ray_address, hang_guard=HANG_GUARD)
    random = {t: random_policy_return(t) for t in POINT_GOAL_TASKS}
    final = {t: run.series(f"eval/return/{t}")[-1] for t in POINT_GOAL_TASKS}
    assert np.mean(list(final.values())) >= np.mean(list(random.values())) + MARGIN, (random, final)
    assert all(final[t] >= random[t] + MARGIN / 2 for t in POINT_GOAL_TASKS), (random, final)  # no task left behind
    if combiner == "pcgrad":
        assert run.series("combiner/critic/pcgrad/conflicts"), "PCGrad statistics were not logged"
