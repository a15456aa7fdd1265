"""SAC through the real CLI, rollout actors, replay table and learner, budgeted in env steps:
Pendulum-v1 must learn, and the cheap multi-task point-goal tasks must improve with `sum` and
with `pcgrad`."""
import numpy as np
import pytest

from tests.support.training_runs import train

pytestmark = pytest.mark.learning

HANG_GUARD = 900  # seconds; the budgets are env steps


# Random actions score about -1,200 on Pendulum-v1; a learned swing-up about -150 to -250.
PENDULUM_TARGET = -400.0


def test_sac_learns_pendulum(tmp_path, ray_address):
    run = train(tmp_path, "configs/pendulum_sac.yaml", "run.total_frames=10000",
                address=ray_address, hang_guard=HANG_GUARD)
    returns = run.series("return/Pendulum-v1")
    assert returns[0] < -900, f"the first episodes should be random, got {returns[0]}"
    # The run ends with an evaluation of the deterministic policy on fresh episodes.
    final = run.series("eval/return/Pendulum-v1")[-1]
    assert final >= PENDULUM_TARGET, f"evaluated return {final} after {run.rows[-1]['frames']} steps"
    alphas = run.series("sac/alpha/Pendulum-v1")
    assert alphas and alphas[-1] < 1.0  # the temperature was learned down from its initial 1.0


POINT_GOAL_TASKS = ("PointGoal-NE-v0", "PointGoal-NW-v0", "PointGoal-SW-v0", "PointGoal-SE-v0")
# Random actions score about -47 per 50-step episode on these tasks; reaching the goal and
# staying there scores about -4. A run must gain at least MARGIN on the mean over the tasks.
MARGIN = 25.0


@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_multitask_sac_improves_every_point_goal_task(tmp_path, ray_address, combiner):
    run = train(tmp_path, "configs/point_goal_sac.yaml", "run.total_frames=6000",
                f"learner.combiner.name={combiner}", "learner.combiner.options={seed: 0}"
                if combiner == "pcgrad" else "learner.combiner.options={}",
                address=ray_address, hang_guard=HANG_GUARD)
    first = np.mean([run.series(f"return/{t}")[0] for t in POINT_GOAL_TASKS])
    final = {t: run.series(f"eval/return/{t}")[-1] for t in POINT_GOAL_TASKS}
    assert np.mean(list(final.values())) >= first + MARGIN, (first, final)
    assert min(final.values()) >= first + MARGIN / 2, (first, final)  # no task left behind
    if combiner == "pcgrad":
        assert run.series("combiner/critic/pcgrad/conflicts"), "PCGrad statistics were not logged"
