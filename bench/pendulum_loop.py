"""accord's SAC learner driven in process in Stable-Baselines3's loop on Pendulum-v1: the
learner's math without the distributed run around it (`accord bench pendulum` runs the whole
system against SB3).

One env; a uniform action for the first `learning_starts` steps; from then on, after every env
step, `updates_per_step` `SacLearner.step`s (a fractional ratio carries its remainder to the next
step), each on `batch_per_task` rows drawn uniformly from everything stored; the
env acts with the learner's newest actor, or with a copy refreshed every `--refresh-every`
updates (what a publish cadence gives the actors of a run). Every `--eval-every` env steps, 5
deterministic episodes on a separate env; stops at the first mean return >= -200. The
evaluation is SB3's `EvalCallback`'s (one env seeded once, its episodes continuing its random
stream), not `actors.evaluation.evaluate_policy` (fresh envs each time), so that the loop differs
from SB3's in the learner alone.

    python -m bench.pendulum_loop --seed 0 [--refresh-every 1] [--eval-every 500] [--max-steps 20000]

The config is configs/pendulum_defaults.yaml, as `accord bench pendulum` trains it.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from accord.config import load_config
from envs.factory import describe
from learner.sac.learner import SacLearner

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pendulum_defaults.yaml"
ENV_ID = "Pendulum-v1"
TARGET, EPISODES = -200.0, 5


def _act(actor, obs: np.ndarray, deterministic: bool) -> np.ndarray:
    """The actor's action in [-1, 1]^A for one observation."""
    with torch.no_grad():
        return actor.act(torch.from_numpy(obs.astype(np.float32))[None], torch.zeros(1, dtype=torch.long),
                         deterministic)[0].numpy()


def _to_env(env, action: np.ndarray) -> np.ndarray:
    """[-1, 1] onto Pendulum's symmetric Box [-2, 2]: high · a."""
    return env.action_space.high * action


def _evaluate(actor, env) -> float:
    returns = []
    for _ in range(EPISODES):
        obs, _ = env.reset()
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(_to_env(env, _act(actor, obs, True)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def run(seed: int, refresh_every: int = 1, eval_every: int = 500, max_steps: int = 20_000) -> int | None:
    """Env steps at the first evaluation >= -200, or None within `max_steps`; prints each one."""
    torch.set_num_threads(1)
    cfg = load_config(CONFIG, [f"run.seed={seed}"])
    torch.manual_seed(seed)
    spec = describe("gym", ENV_ID)
    learner = SacLearner(cfg, spec)
    behaviour = copy.deepcopy(learner.actor)
    starts, n = cfg.replay.learning_starts, cfg.learner.sac.batch_per_task
    ratio, owed = cfg.learner.sac.updates_per_step, 0.0
    env, eval_env = gym.make(ENV_ID), gym.make(ENV_ID)
    obs, _ = env.reset(seed=seed)
    eval_env.reset(seed=seed + 10_000)
    rng = np.random.default_rng(seed)
    D, A = spec.obs_shape[0], spec.action_dim
    store = {"obs": np.zeros((max_steps, D), np.float32), "action": np.zeros((max_steps, A), np.float32),
             "reward": np.zeros(max_steps, np.float32), "next_obs": np.zeros((max_steps, D), np.float32),
             "terminated": np.zeros(max_steps, bool)}
    start = time.monotonic()
    for step in range(1, max_steps + 1):
        action = (rng.uniform(-1, 1, A).astype(np.float32) if step <= starts
                  else _act(behaviour, obs, False))
        next_obs, reward, terminated, truncated, _ = env.step(_to_env(env, action))
        for key, value in zip(store, (obs, action, reward, next_obs, terminated)):
            store[key][step - 1] = value
        obs = env.reset()[0] if terminated or truncated else next_obs
        if step >= starts:
            owed += ratio
            while owed >= 1:
                owed -= 1
                rows = rng.integers(0, step, n)
                batch = {key: column[rows][None] for key, column in store.items()}
                learner.step({**batch, "truncated": np.zeros((1, n), bool), "inserted": step})
                if learner.steps % refresh_every == 0:
                    behaviour.load_state_dict(learner.actor.state_dict())
        if step % eval_every == 0:
            mean_return = _evaluate(learner.actor, eval_env)
            print(f"env steps {step:,}: mean return {mean_return:.0f} ({time.monotonic() - start:.0f} s)",
                  flush=True)
            if mean_return >= TARGET:
                return step
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refresh-every", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--max-steps", type=int, default=20_000)
    args = parser.parse_args()
    # As the learner actor (learner/remote.py); here, not in `run`, which tests call in process.
    torch.set_flush_denormal(True)
    reached = run(args.seed, args.refresh_every, args.eval_every, args.max_steps)
    print(f"seed {args.seed}, refresh every {args.refresh_every}: "
          + (f"-200 at {reached:,} env steps" if reached else f"not -200 within {args.max_steps:,}"))


if __name__ == "__main__":
    main()
