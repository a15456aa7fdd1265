"""`accord eval`: play a checkpoint's policy on each task of its run, locally, without Ray."""
from __future__ import annotations

from pathlib import Path

from accord.config import load_config
from actors.evaluation import TaskResult, build_eval_policy, evaluate_policy
from actors.rollout import env_options
from envs import describe
from learner.algorithm import policy_weights
from learner.checkpoint import load_checkpoint, resolve_checkpoint


def evaluate_checkpoint(path: Path, episodes: int, greedy: bool = False,
                        max_steps: int = 1_000_000) -> dict[str, TaskResult]:
    ckpt, run_dir = resolve_checkpoint(path)
    cfg = load_config(run_dir / "config.yaml")
    spec = describe(cfg.env.kind, cfg.env.tasks[0], **env_options(cfg))
    act = build_eval_policy(cfg, spec, policy_weights(cfg, load_checkpoint(ckpt)), greedy)
    return evaluate_policy(cfg, act, episodes, cfg.run.seed + 10_000, max_steps)
