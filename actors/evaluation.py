"""Evaluation episodes: play a policy on each task of a run and report the mean return and
success rate per task. Used by `accord eval` (a checkpoint, locally, no Ray) and by the
evaluator actor during training (`run.eval_every`).

SAC is evaluated with its deterministic policy, tanh(mean), as papers 003 and 004 report
success; IMPALA samples from its policy unless `greedy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from actors.policy import policy_network
from actors.rollout import env_options
from envs import make_vec_env

Act = Callable[[np.ndarray, torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class TaskResult:
    mean_return: float
    std_return: float
    episodes: int
    success_rate: float | None  # None where the env reports no success


def _owned(value) -> torch.Tensor:
    """A tensor of its own: weights fetched from Ray's object store are read-only NumPy views,
    which torch would share and warn about (a "non-writable NumPy array" line in every run's
    log); a checkpoint's weights (`accord eval`) are already tensors, which torch.tensor would
    warn about copying."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return torch.from_numpy(np.array(value))


def build_eval_policy(cfg, spec, weights: dict, greedy: bool = False) -> Act:
    """An act function from the weights actors run (`Algorithm.actor_weights()`)."""
    model = policy_network(cfg, spec)
    model.load_state_dict({k: _owned(v) for k, v in weights.items()})
    model.eval()

    @torch.inference_mode()
    def act(obs: np.ndarray, task: torch.Tensor) -> np.ndarray:
        if cfg.learner.algorithm == "sac":
            return model.act(torch.from_numpy(obs), task, deterministic=True).numpy()
        logits, _ = model(torch.from_numpy(obs), task)
        if greedy:
            return logits.argmax(-1).numpy()
        return torch.distributions.Categorical(logits=logits).sample().numpy()

    return act


def evaluate_policy(cfg, act: Act, episodes: int, seed: int,
                    max_steps: int = 1_000_000) -> dict[str, TaskResult]:
    """`episodes` episodes of every task of the run, on fresh envs seeded from `seed`."""
    options = env_options(cfg)
    results = {}
    for task_id, name in enumerate(cfg.env.tasks):
        env = make_vec_env(cfg.env.kind, name, task_id, min(episodes, 32), seed + task_id, **options)
        scores: list[float] = []
        successes: list[float] = []
        steps = 0
        while len(scores) < episodes and steps < max_steps:
            round_episodes, round_steps = _play_round(env, act, task_id, max_steps - steps)
            scores += [e.score for e in round_episodes]
            successes += [e.success for e in round_episodes if e.success is not None]
            steps += round_steps
        env.close()
        scores, successes = scores[:episodes], successes[:episodes]
        results[name] = TaskResult(
            float(np.mean(scores)) if scores else float("nan"),
            float(np.std(scores)) if scores else float("nan"), len(scores),
            float(np.mean(successes)) if successes else None)
    return results


def _play_round(env, act: Act, task_id: int, max_steps: int) -> tuple[list, int]:
    """One episode from each env. Taking the first N episodes to end across the envs instead
    would favour short episodes and bias the mean down."""
    obs = env.reset()
    task = torch.full((env.num_envs,), task_id, dtype=torch.int64)
    finished: dict[int, object] = {}
    steps = 0
    while len(finished) < env.num_envs and steps < max_steps:
        result = env.step(act(obs, task))
        obs = result.obs
        ended = np.flatnonzero(result.terminated | result.truncated)  # episodes come in env order
        for env_index, episode in zip(ended, result.episodes):
            finished.setdefault(int(env_index), episode)
        steps += env.num_envs
    return list(finished.values()), steps


def eval_metrics(results: dict[str, TaskResult]) -> dict[str, float]:
    """Metric keys of one evaluation: eval/return/<task>, eval/success/<task>, eval/success_mean."""
    out = {f"eval/return/{name}": r.mean_return for name, r in results.items()}
    rates = {name: r.success_rate for name, r in results.items() if r.success_rate is not None}
    out.update({f"eval/success/{name}": rate for name, rate in rates.items()})
    if rates:
        out["eval/success_mean"] = float(np.mean(list(rates.values())))
    return out
