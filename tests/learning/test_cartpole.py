"""IMPALA on CartPole-v1 through the real CLI, rollout actors, queue and learner must reach a
mean episode return >= 150 (last 100 episodes) within a budget of frames, never of seconds."""
import pytest

from tests.support.training_runs import train

pytestmark = pytest.mark.learning

SWAPPED = "tests.support.swapped_cartpole:CartPoleSwapped-v1"
# About 3x the ~280K frames configs/cartpole.yaml took to reach 150 in README's `bench peer`.
ONE_TASK_FRAME_BUDGET = 800_000
# The two tasks reached 150 at 776K, 1.15M, 1.23M, 1.45M and 1.56M frames in five runs on 2 cores
# (2026-12-05), and a sixth had not at 1.2M: about twice the slowest. A run stops at the target,
# so the budget costs time only in a run that does not reach it.
FRAME_BUDGET = 3_000_000
HANG_GUARD = 1800  # seconds; the budgets are frames


def test_impala_learns_cartpole(tmp_path, ray_address):
    run = train(tmp_path, "configs/cartpole.yaml", "run.stop_return=150",
                f"run.total_frames={ONE_TASK_FRAME_BUDGET}", address=ray_address, hang_guard=HANG_GUARD)
    returns = run.series("return/CartPole-v1")
    assert "every task reached mean return 150" in run.output, (returns[-1], run.rows[-1]["frames"],
                                                                 run.output[-2000:])
    assert returns[-1] >= 150, f"mean return {returns[-1]} after {run.rows[-1]['frames']} frames"
    assert returns[0] < 100  # it learned: early returns were far below the target


def test_two_conflicting_tasks_learn_together_through_pcgrad(tmp_path, ray_address):
    """CartPole-v1 and CartPole with its actions swapped (tests/support/swapped_cartpole.py):
    one torso, per-task heads, PCGrad on the torso. The tasks want opposite action mappings, so
    a learner that mixed up the tasks' columns or heads could not learn both. Budgeted by
    frames, not seconds: both must reach the target within FRAME_BUDGET, and PCGrad must have
    seen conflicting gradients. The swapped env is named "module:EnvId", so the rollout
    actors (Ray workers) import its registration themselves."""
    run = train(tmp_path, "configs/cartpole.yaml", f"env.tasks=[CartPole-v1,{SWAPPED}]",
                "learner.per_task_heads=true", "learner.combiner.name=pcgrad",
                "learner.combiner.options={seed: 0}", "run.stop_return=150",
                f"run.total_frames={FRAME_BUDGET}", address=ray_address, hang_guard=HANG_GUARD)
    returns = {task: run.series(f"return/{task}")[-1] for task in ("CartPole-v1", SWAPPED)}
    assert "every task reached mean return 150" in run.output, (returns, run.rows[-1]["frames"],
                                                                 run.output[-2000:])
    assert min(returns.values()) >= 150, returns
    conflicts = run.series("combiner/pcgrad/conflicts")
    assert conflicts and max(conflicts) > 0
