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
    rows = _train(tmp_path, "configs/pendulum_sac.yaml", "run.total_frames=12000")
    returns = _column(rows, "return/Pendulum-v1")
    assert returns[0] < -900, f"the first episodes should be random, got {returns[0]}"
    assert returns[-1] >= PENDULUM_TARGET, f"mean return {returns[-1]} after {rows[-1]['frames']} steps"
    alphas = _column(rows, "sac/alpha/Pendulum-v1")
    assert alphas and alphas[-1] < 1.0  # the temperature was learned down from its initial 1.0
