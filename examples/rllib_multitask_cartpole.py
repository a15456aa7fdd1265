"""Multi-task CartPole trained by RLlib's PPO, with accord's PCGrad (or Sum) on the shared encoder.

Three CartPoles with different pole lengths are three tasks; RLlib trains one module per task
(own policy and value heads) over one shared encoder (`SharedEncoderMultiRLModule`), and
`AccordPPOTorchLearner` combines the three tasks' gradients on the encoder with the chosen
combiner before RLlib's own clipping and Adam step.

    .venv/bin/python examples/rllib_multitask_cartpole.py --combiner pcgrad --iterations 20
    .venv/bin/python examples/rllib_multitask_cartpole.py --combiner sum --iterations 20

Prints, per iteration, the mean episode return of each task and the combiner's statistics
(PCGrad: conflicting pairs and mean cosine between the task gradients).
"""
from __future__ import annotations

import argparse
import sys

import ray

from accord.rllib import multitask_ppo_config
from accord.rllib.learner import STATS_KEY
from combiners import COMBINERS


def summary(result: dict) -> dict:
    """Per-task mean returns and the combiner's statistics from one `algo.train()` result."""
    runners = result.get("env_runners", {})
    returns = dict(runners.get("module_episode_returns_mean", {}))
    stats = result.get("learners", {}).get("__all_modules__", {}).get(STATS_KEY, {})
    return {"returns": returns, "stats": dict(stats),
            "env_steps": int(runners.get("num_env_steps_sampled_lifetime", 0))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--combiner", default="pcgrad", choices=sorted(COMBINERS))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--pole-lengths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--env-runners", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.iterations < 1 or any(length <= 0 for length in args.pole_lengths):
        print("error: --iterations and every --pole-lengths must be positive", file=sys.stderr)
        return 2

    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    algo = multitask_ppo_config(args.combiner, args.pole_lengths, seed=args.seed,
                                num_env_runners=args.env_runners).build_algo()
    try:
        for it in range(1, args.iterations + 1):
            s = summary(algo.train())
            returns = " ".join(f"{m}={v:6.1f}" for m, v in sorted(s["returns"].items()))
            stats = " ".join(f"{k}={v:.3g}" for k, v in sorted(s["stats"].items())
                             if not k.startswith("norm/"))
            print(f"iter {it:3d}  steps {s['env_steps']:7d}  {returns}  {stats}", flush=True)
    finally:
        algo.stop()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
