"""Auxiliary losses through the real system (CLI, Ray actors, queue, learner) on the gridworlds
of paper 000 (App. F), budgeted by frames.

1. Paper 000's Fig. 3 (top row) in small: on the main task of eight sampled worlds (the +10
   rewards removed), seeds 0 and 1 in turn, distillation from the tabular Q-learning teacher
   of the original world, gated by the cosine with the policy gradient ("cos"), must end at
   least as well as simply adding the two gradients ("add") and better than policy gradient
   alone ("pg"), on average; and every method must end above a uniformly random policy on the
   same worlds, so runs that learned nothing cannot pass by comparison alone.
2. A helpful and an adversarial auxiliary term side by side: distillation from the tabular
   Q-learning teacher of the main task, and from the same teacher inverted (softmax(-Q): it
   pulls toward the worst action, so its gradient opposes the policy gradient). OL-AUX must
   lower the adversarial term's weight (and raise the helpful one's); the cosine gate must
   close for the adversarial term and stay open for the helpful one.
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.random_gridworld_return import RANDOM_RETURN
from tests.support.training_runs import Run, train as train_run

pytestmark = pytest.mark.learning

HANG_GUARD = 600  # seconds; the budget is frames
TWO_TEACHERS = ("learner.aux={helpful: {kind: distill, teacher: q_main, temperature: 0}, "
                "adversarial: {kind: distill, teacher: q_main, temperature: 0, invert: true}}")


def train(root: Path, address: str, *sets: str, config: str = "configs/gridworld_pg.yaml") -> Run:
    # a metric row every quarter second: even a fast 30,000-frame run leaves a dozen
    return train_run(root, config, "run.log_every=0.25", *sets, address=address, hang_guard=HANG_GUARD)


# The first eight sampled worlds, not a chosen subset, each trained once, with run.seed 0 and 1
# in turn (the actors' envs and action sampling, the learner's weights). The claim is about
# worlds on average, and the worlds differ far more than seeds do: on world 3 distillation
# from the original world's teacher hurts every time (cos about -3.3 against pg -0.5), so four
# worlds at two seeds each left the mean to how far two worlds swung. Eight worlds once each
# are the same 24 runs.
WORLD_SEEDS = tuple((world, world % 2) for world in range(8))
FRAME_BUDGET = 60_000      # where policy gradient alone starts to score on these worlds
METHODS = ("pg", "add", "cos")
# Two runs at a time: each one's start-up overlaps the other's training. Three at a time took
# no less (317.7 s for the 24 runs against 290.2 and 313.2 s).
PARALLEL_RUNS = 2


def _final(method: str, world: int, seed: int, root: Path, address: str) -> float:
    """The run's last mean return over its last 100 episodes (the loop's return/<task>)."""
    task = f"world-{world}-main"
    run = train(root / f"{method}-{world}-{seed}", address, f"env.tasks=[{task}]", f"run.seed={seed}",
                f"run.total_frames={FRAME_BUDGET}", config=f"configs/gridworld_{method}.yaml")
    return run.series(f"return/{task}")[-1]


def test_cosine_gated_distillation_beats_adding_it_and_policy_gradient_alone(tmp_path, ray_address):
    runs = [(method, world, seed) for world, seed in WORLD_SEEDS for method in METHODS]
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        finals = dict(zip(runs, pool.map(lambda run: _final(*run, tmp_path, ray_address), runs)))
    returns = {m: [finals[(m, w, s)] for w, s in WORLD_SEEDS] for m in METHODS}
    mean = {method: sum(r) / len(r) for method, r in returns.items()}
    # a uniformly random policy's mean return on the same worlds (-1.22), measured beforehand
    floor = sum(RANDOM_RETURN[w] for w, _ in WORLD_SEEDS) / len(WORLD_SEEDS)
    print(f"gridworld (world, seed) {WORLD_SEEDS}, {FRAME_BUDGET} frames: returns {returns}, "
          f"means {mean}, random policy {floor:.2f}")
    for method in METHODS:
        assert mean[method] > floor, (method, mean, floor, returns)
    assert mean["cos"] >= mean["add"], (mean, returns)
    assert mean["cos"] > mean["pg"], (mean, returns)


# World 7, whose main-task teacher agrees with the policy gradient from the start (on some
# worlds an untrained critic's first advantages disagree with even the optimal teacher).
WORLD = "env.tasks=[world-7-main]"


def test_olaux_lowers_the_weight_of_an_adversarial_aux_term(tmp_path, ray_address):
    run = train(tmp_path, ray_address, WORLD, TWO_TEACHERS, "learner.combiner.name=olaux",
                "learner.combiner.options={horizon: 5, lr: 0.2}", "run.total_frames=30000")
    adversarial = run.series("combiner/w/aux/adversarial")
    helpful = run.series("combiner/w/aux/helpful")
    dots = run.series("combiner/dot/aux/adversarial")
    assert len(adversarial) >= 3, run.rows[-1]
    # w starts at exactly 1 (combiners/olaux.py): it falls, and far. The first metric row is no
    # baseline: it comes some horizons in and may already read the clamp at 0.
    assert adversarial[-1] < 0.5, adversarial
    assert helpful[-1] > 1.0, helpful
    assert sum(d < 0 for d in dots) > len(dots) / 2, dots


def test_the_cosine_gate_closes_for_an_adversarial_aux_term(tmp_path, ray_address):
    # Paper 000's Atari defaults: per-layer cosine, moving average 0.999, threshold 0.02.
    run = train(tmp_path, ray_address, WORLD, TWO_TEACHERS, "learner.combiner.name=cosine_gate",
                "run.total_frames=30000")
    gate_adversarial = run.series("combiner/gate/aux/adversarial")
    gate_helpful = run.series("combiner/gate/aux/helpful")
    assert len(gate_adversarial) >= 3, run.rows[-1]
    assert gate_adversarial[-1] == 0.0 and run.series("combiner/cos/aux/adversarial")[-1] < 0
    assert gate_helpful[-1] == 1.0 and run.series("combiner/cos/aux/helpful")[-1] > 0.02
