"""IMPALA on CartPole-v1 through the real CLI, rollout actors, queue and learner must reach a
mean episode return >= 150 (last 100 episodes) within a CPU budget."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.learning

REPO = Path(__file__).resolve().parents[2]
ACCORD = str(Path(sys.executable).parent / "accord")
BUDGET_SECONDS = 420


def test_impala_learns_cartpole(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [ACCORD, "train", "configs/cartpole.yaml", "--set", f"run.root={tmp_path}",
         "--set", "run.stop_return=150", "--set", f"run.max_seconds={BUDGET_SECONDS}",
         "--set", "run.total_frames=5000000", "--set", "run.progress=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=BUDGET_SECONDS + 180)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    (run_dir,) = tmp_path.iterdir()
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    final = float(rows[-1]["return/CartPole-v1"])
    assert "every task reached mean return 150" in out, out[-2000:]
    assert final >= 150, f"mean return {final} after {rows[-1]['frames']} frames"
    # It learned: early returns were far below the target.
    first = next(float(r["return/CartPole-v1"]) for r in rows if r.get("return/CartPole-v1"))
    assert first < 100
