"""SAC through the real CLI, rollout actors, replay table and learner, budgeted in env steps:
Pendulum-v1 must learn, and the cheap multi-task point-goal tasks must improve with `sum` and
with `pcgrad`."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.learning

REPO = Path(__file__).resolve().parents[2]
ACCORD = str(Path(sys.executable).parent / "accord")


def _train(tmp_path, config: str, *overrides: str, timeout: float = 900) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [ACCORD, "train", config, "--set", f"run.root={tmp_path}", "--set", "run.progress=false",
         *[arg for o in overrides for arg in ("--set", o)]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    (run_dir,) = tmp_path.iterdir()
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def _column(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


# Random actions score about -1,200 on Pendulum-v1; a learned swing-up about -150 to -250.
PENDULUM_TARGET = -400.0


def test_sac_learns_pendulum(tmp_path):
    rows = _train(tmp_path, "configs/pendulum_sac.yaml", "run.total_frames=10000")
    returns = _column(rows, "return/Pendulum-v1")
    assert returns[0] < -900, f"the first episodes should be random, got {returns[0]}"
    # The run ends with an evaluation of the deterministic policy on fresh episodes.
    final = _column(rows, "eval/return/Pendulum-v1")[-1]
    assert final >= PENDULUM_TARGET, f"evaluated return {final} after {rows[-1]['frames']} steps"
    alphas = _column(rows, "sac/alpha/Pendulum-v1")
    assert alphas and alphas[-1] < 1.0  # the temperature was learned down from its initial 1.0


POINT_GOAL_TASKS = ("PointGoal-NE-v0", "PointGoal-NW-v0", "PointGoal-SW-v0", "PointGoal-SE-v0")
# Random actions score about -47 per 50-step episode on these tasks; reaching the goal and
# staying there scores about -4. A run must gain at least MARGIN on the mean over the tasks.
MARGIN = 25.0


@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_multitask_sac_improves_every_point_goal_task(tmp_path, combiner):
    rows = _train(tmp_path, "configs/point_goal_sac.yaml", "run.total_frames=6000",
                  f"learner.combiner.name={combiner}", "learner.combiner.options={seed: 0}"
                  if combiner == "pcgrad" else "learner.combiner.options={}")
    first = np.mean([_column(rows, f"return/{t}")[0] for t in POINT_GOAL_TASKS])
    final = {t: _column(rows, f"eval/return/{t}")[-1] for t in POINT_GOAL_TASKS}
    assert np.mean(list(final.values())) >= first + MARGIN, (first, final)
    assert min(final.values()) >= first + MARGIN / 2, (first, final)  # no task left behind
    if combiner == "pcgrad":
        assert _column(rows, "combiner/critic/pcgrad/conflicts"), "PCGrad statistics were not logged"
