"""`accord eval` plays a checkpoint's policy on its run's tasks (real envs, no Ray)."""
import re
import subprocess
import sys
from pathlib import Path

from accord.config import load_config, to_yaml
from learner.checkpoint import save_checkpoint
import numpy as np

from envs import EnvSpec
from learner.impala.learner import ImpalaLearner as Learner

SPEC = EnvSpec((4,), np.dtype(np.float32), num_actions=2)

REPO = Path(__file__).resolve().parents[2]


def test_eval_reports_the_mean_return_of_a_checkpoint(tmp_path):
    cfg = load_config(REPO / "configs" / "cartpole.yaml")
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    learner = Learner(cfg, SPEC)
    save_checkpoint(tmp_path, learner.state_dict(), step=0)
    out = subprocess.run([sys.executable, "-m", "accord.cli", "eval", str(tmp_path), "--episodes", "6"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    match = re.search(r"CartPole-v1: mean return ([\d.]+) ± ([\d.]+) over (\d+) episodes", out.stdout)
    assert match, out.stdout
    mean, episodes = float(match.group(1)), int(match.group(3))
    # An untrained policy on CartPole: a few dozen steps, never the 500-step cap.
    assert episodes == 6 and 5 <= mean < 200


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "accord.cli", "eval", str(tmp_path / "nope.pt")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "no such checkpoint" in out.stderr
