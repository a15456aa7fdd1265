"""Auxiliary losses through the real system (CLI, Ray actors, queue, learner) on the gridworlds
of paper 000 (App. F), budgeted by frames.

1. Paper 000's Fig. 3 (top row) in small: on the main task of several sampled worlds (the +10
   rewards removed), two seeds each, distillation from the tabular Q-learning teacher of the
   original world, gated by the cosine with the policy gradient ("cos"), must end at least as
   well as simply adding the two gradients ("add") and better than policy gradient alone
   ("pg"), on average; and every method must end above a uniformly random policy on the same
   worlds, so runs that learned nothing cannot pass by comparison alone.
2. A helpful and an adversarial auxiliary term side by side: distillation from the tabular
   Q-learning teacher of the main task, and from the same teacher inverted (softmax(-Q): it
   pulls toward the worst action, so its gradient opposes the policy gradient). OL-AUX must
   lower the adversarial term's weight (and raise the helpful one's); the cosine gate must
   close for the adversarial term and stay open for the helpful one.
"""
import csv
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.learning

REPO = Path(__file__).resolve().parents[2]
ACCORD = str(Path(sys.executable).parent / "accord")
HANG_GUARD = 600  # seconds; the budget is frames
TWO_TEACHERS = ("learner.aux={helpful: {kind: distill, teacher: q_main, temperature: 0}, "
                "adversarial: {kind: distill, teacher: q_main, temperature: 0, invert: true}}")


def train(tmp_path, *sets: str, config: str = "configs/gridworld_pg.yaml") -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [ACCORD, "train", config, "--set", f"run.root={tmp_path}",
         # a metric row every quarter second: even a fast 30,000-frame run leaves a dozen
         "--set", "run.progress=false", "--set", "run.log_every=0.25",
         *[arg for s in sets for arg in ("--set", s)]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (run_dir,) = tmp_path.iterdir()
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def series(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


WORLDS = (0, 1, 2, 3)      # the first four sampled worlds, not a chosen subset
SEEDS = (0, 1)             # run.seed: actors' envs and action sampling, the learner's weights
FRAME_BUDGET = 60_000      # where policy gradient alone starts to score on these worlds
METHODS = ("pg", "add", "cos")
# A uniformly random policy's mean episode return on world-<k>-main: 20,000 episodes of 64
# envs stepped through GridWorldVecEnv with uniform actions (standard errors 0.02-0.04),
# measured 2026-12-04. Their mean, -1.55, is the floor each method's mean must clear.
RANDOM_RETURN = {0: 1.06, 1: -0.56, 2: -3.71, 3: -3.01}
PARALLEL_RUNS = 2          # two runs at a time: each one's Ray start-up overlaps the other's training


def final_return(rows: list[dict], task: str) -> float:
    """The last mean return over the last 100 episodes (the loop's return/<task>)."""
    return series(rows, f"return/{task}")[-1]


def _final(method: str, world: int, seed: int, root: Path) -> float:
    task = f"world-{world}-main"
    rows = train(root / f"{method}-{world}-{seed}", f"env.tasks=[{task}]", f"run.seed={seed}",
                 f"run.total_frames={FRAME_BUDGET}", config=f"configs/gridworld_{method}.yaml")
    return final_return(rows, task)


def test_cosine_gated_distillation_beats_adding_it_and_policy_gradient_alone(tmp_path):
    runs = [(method, world, seed) for world in WORLDS for seed in SEEDS for method in METHODS]
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        finals = dict(zip(runs, pool.map(lambda run: _final(*run, tmp_path), runs)))
    returns = {m: [finals[(m, w, s)] for w in WORLDS for s in SEEDS] for m in METHODS}
    mean = {method: sum(r) / len(r) for method, r in returns.items()}
    floor = sum(RANDOM_RETURN[w] for w in WORLDS) / len(WORLDS)
    print(f"gridworld worlds {WORLDS} x seeds {SEEDS}, {FRAME_BUDGET} frames: returns {returns}, "
          f"means {mean}, random policy {floor:.2f}")
    for method in METHODS:
        assert mean[method] > floor, (method, mean, floor, returns)
    assert mean["cos"] >= mean["add"], (mean, returns)
    assert mean["cos"] > mean["pg"], (mean, returns)


# World 7, whose main-task teacher agrees with the policy gradient from the start (on some
# worlds an untrained critic's first advantages disagree with even the optimal teacher).
WORLD = "env.tasks=[world-7-main]"


def test_olaux_lowers_the_weight_of_an_adversarial_aux_term(tmp_path):
    rows = train(tmp_path, WORLD, TWO_TEACHERS, "learner.combiner.name=olaux",
                 "learner.combiner.options={horizon: 5, lr: 0.2}", "run.total_frames=30000")
    adversarial = series(rows, "combiner/w/aux/adversarial")
    helpful = series(rows, "combiner/w/aux/helpful")
    dots = series(rows, "combiner/dot/aux/adversarial")
    assert len(adversarial) >= 3, rows[-1]
    # w starts at 1 (the first metric row comes some horizons in): it falls, and far.
    assert adversarial[-1] < min(0.5, adversarial[0]), adversarial
    assert helpful[-1] > 1.0, helpful
    assert sum(d < 0 for d in dots) > len(dots) / 2, dots


def test_the_cosine_gate_closes_for_an_adversarial_aux_term(tmp_path):
    # Paper 000's Atari defaults: per-layer cosine, moving average 0.999, threshold 0.02.
    rows = train(tmp_path, WORLD, TWO_TEACHERS, "learner.combiner.name=cosine_gate",
                 "run.total_frames=30000")
    gate_adversarial = series(rows, "combiner/gate/aux/adversarial")
    gate_helpful = series(rows, "combiner/gate/aux/helpful")
    assert len(gate_adversarial) >= 3, rows[-1]
    assert gate_adversarial[-1] == 0.0 and series(rows, "combiner/cos/aux/adversarial")[-1] < 0
    assert gate_helpful[-1] == 1.0 and series(rows, "combiner/cos/aux/helpful")[-1] > 0.02
