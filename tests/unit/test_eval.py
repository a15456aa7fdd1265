"""`accord eval` plays a checkpoint's policy on its run's tasks (real envs, no Ray)."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from accord.config import config_from_dict, load_config, to_yaml
from envs import EnvSpec
from learner.checkpoint import save_checkpoint
from learner.impala.learner import ImpalaLearner as Learner
from tests.support.swapped_cartpole import TASK as SWAPPED

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
    assert out.returncode == 2
    assert "no such checkpoint" in out.stderr


def test_eval_of_a_run_skips_a_corrupt_newest_checkpoint_and_leaves_it_on_disk(tmp_path):
    cfg = load_config(REPO / "configs" / "cartpole.yaml")
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    good = save_checkpoint(tmp_path, Learner(cfg, SPEC).state_dict(), step=1)
    bad = good.with_name("ckpt_000000002.pt")
    bad.write_bytes(b"cut short")
    out = subprocess.run([sys.executable, "-m", "accord.cli", "eval", str(tmp_path), "--episodes", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("skipped corrupt checkpoint ckpt_000000002.pt: "), out.stderr
    assert re.search(r"^CartPole-v1: mean return [\d.]+ ± [\d.]+ over 2 episodes", out.stdout, re.M), out.stdout
    # A reader: the bad file stays where it was (a run may still be writing beside it).
    assert bad.read_bytes() == b"cut short" and good.is_file()


def balancing_weights(learner: Learner, signs) -> None:
    """Hand-set weights that balance CartPole: push right iff theta + 0.5 theta_dot > 0; head k
    with sign -1 takes the opposite action, which balances the swapped CartPole. The tanh MLP
    carries the sign of that sum through one unit per layer; every other weight is zero."""
    with torch.no_grad():
        for p in learner.model.parameters():
            p.zero_()
        first, second = [m for m in learner.model.torso.modules() if isinstance(m, torch.nn.Linear)]
        first.weight[0] = torch.tensor([0.0, 0.0, 1.0, 0.5]) * 100.0
        second.weight[0, 0] = 10.0
        for head, sign in zip(learner.model.heads, signs):
            head.weight[1, 0], head.weight[0, 0] = 10.0 * sign, -10.0 * sign  # actions 1, 0


def run_eval(run_dir, *args):
    out = subprocess.run([sys.executable, "-m", "accord.cli", "eval", str(run_dir), *args],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r"^(\S+): mean return ([\d.]+) ± [\d.]+ over \d+ episodes", out.stdout, re.M)}


def test_eval_plays_the_checkpoint_weights_with_each_task_head(tmp_path):
    """A checkpoint whose head 0 balances CartPole and head 1 balances the swapped CartPole
    scores the 500 cap on both tasks; with the heads exchanged it fails both. Eval that ignored
    the checkpoint, or used one head for every task, could not tell these apart."""
    cfg = config_from_dict({
        "env": {"kind": "gym", "tasks": ["CartPole-v1", SWAPPED], "envs_per_actor": 2},
        "actors": {"num_actors": 2},
        "learner": {"model": "mlp", "batch_size": 2, "per_task_heads": True},
    })
    results = {}
    for name, signs in (("right", (1.0, -1.0)), ("exchanged", (-1.0, 1.0))):
        run_dir = tmp_path / name
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        learner = Learner(cfg, SPEC)
        balancing_weights(learner, signs)
        save_checkpoint(run_dir, learner.state_dict(), step=1)
        results[name] = run_eval(run_dir, "--episodes", "3", "--greedy")
    assert results["right"] == {"CartPole-v1": 500.0, SWAPPED: 500.0}
    assert max(results["exchanged"].values()) < 50.0
