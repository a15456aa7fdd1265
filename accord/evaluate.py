"""`accord eval`: play a checkpoint's policy on each task of its run, locally, without Ray."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from accord.config import load_config
from actors.rollout import env_options
from envs import describe, make_vec_env
from learner.checkpoint import list_checkpoints, load_checkpoint
from models.actor_critic import build_model


def _resolve(path: Path) -> tuple[Path, Path]:
    """(checkpoint file, run directory) from either a checkpoint or a run directory."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"{path} holds no checkpoints")
        return found[-1], path
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint {path}")
    return path, path.parent.parent


@torch.inference_mode()
def evaluate_checkpoint(path: Path, episodes: int, greedy: bool = False,
                        max_steps: int = 1_000_000) -> dict[str, tuple[float, float, int]]:
    ckpt, run_dir = _resolve(path)
    cfg = load_config(run_dir / "config.yaml")
    state = load_checkpoint(ckpt)
    options = env_options(cfg)
    spec = describe(cfg.env.kind, cfg.env.tasks[0], **options)
    model = build_model(cfg.learner.model, spec.obs_shape, spec.num_actions, len(cfg.env.tasks),
                        cfg.learner.per_task_heads)
    model.load_state_dict(state["model"])
    model.eval()
    results = {}
    for task_id, name in enumerate(cfg.env.tasks):
        env = make_vec_env(cfg.env.kind, name, task_id, min(episodes, 32), cfg.run.seed + 10_000,
                           **options)
        scores: list[float] = []
        steps = 0
        while len(scores) < episodes and steps < max_steps:
            round_scores, round_steps = _play_round(env, model, task_id, greedy, max_steps - steps)
            scores += round_scores
            steps += round_steps
        env.close()
        scores = scores[:episodes]
        results[name] = (float(np.mean(scores)) if scores else float("nan"),
                         float(np.std(scores)) if scores else float("nan"), len(scores))
    return results


def _play_round(env, model, task_id: int, greedy: bool, max_steps: int) -> tuple[list[float], int]:
    """One episode from each env. Taking the first N episodes to end across the envs instead
    would favour short episodes and bias the mean down."""
    obs = env.reset()
    task = torch.full((env.num_envs,), task_id, dtype=torch.int64)
    scores: dict[int, float] = {}
    steps = 0
    while len(scores) < env.num_envs and steps < max_steps:
        logits, _ = model(torch.from_numpy(obs), task)
        action = logits.argmax(-1) if greedy else torch.distributions.Categorical(logits=logits).sample()
        result = env.step(action.numpy())
        obs = result.obs
        ended = np.flatnonzero(result.terminated | result.truncated)  # episodes come in env order
        for env_index, episode in zip(ended, result.episodes):
            scores.setdefault(int(env_index), episode.score)
        steps += env.num_envs
    return list(scores.values()), steps
