"""`accord eval`: play a checkpoint's policy on each task of its run, locally, without Ray."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from accord.config import load_config
from accord.errors import UserError

if TYPE_CHECKING:
    from actors.evaluation import TaskResult

# torch and the policy modules are imported once the paths are known to be usable: a wrong
# path costs one line and no seconds of imports.


def evaluate_checkpoint(path: Path, episodes: int, greedy: bool = False,
                        max_steps: int = 1_000_000,
                        on_skip: Callable[[str], None] = lambda message: None) -> dict[str, TaskResult]:
    if episodes < 1:
        raise UserError(f"--episodes: must be at least 1, got {episodes}")
    ckpt, run_dir, state = open_checkpoint(path, on_skip)
    cfg = load_config(run_dir / "config.yaml")
    from actors.evaluation import build_eval_policy, evaluate_policy
    from actors.rollout import env_options
    from envs import describe

    spec = describe(cfg.env.kind, cfg.env.tasks[0], **env_options(cfg))
    act = build_eval_policy(cfg, spec, _policy_weights(cfg, state, ckpt), greedy)
    return evaluate_policy(cfg, act, episodes, cfg.run.seed + 10_000, max_steps)


def open_checkpoint(path: str | Path, on_skip: Callable[[str], None] = lambda message: None
                    ) -> tuple[Path, Path, dict]:
    """(checkpoint file, its run directory, its state) from a checkpoint file or a run directory.

    A run directory gives its newest checkpoint that loads; each newer one that does not is
    reported through `on_skip` and left on disk untouched (a run may still be writing beside
    us). A file named outright must load itself. `UserError` names what is wrong otherwise."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise UserError(f"{path} is not a run directory (no config.yaml)")
        if not any((path / "checkpoints").glob("ckpt_*.pt")):
            raise UserError(f"{path} holds no checkpoints")
        from learner.checkpoint import load_latest

        restored = load_latest(path, set_aside=False)
        if restored.path is None:
            if not restored.corrupt:
                raise UserError(f"{path} holds no checkpoints")
            newest, error = restored.corrupt[0]
            raise UserError(f"none of the {len(restored.corrupt)} checkpoints under "
                            f"{path}/checkpoints loads ({newest.name}: {error})")
        for bad, error in restored.corrupt:
            on_skip(f"skipped corrupt checkpoint {bad.name}: {error}")
        return restored.path, path, restored.state
    if not path.exists():
        raise UserError(f"no such checkpoint or run directory {path}")
    from learner.checkpoint import try_load

    state, error = try_load(path)
    if error is not None:
        raise UserError(f"{path} does not load as a checkpoint: {error}")
    run_dir = path.parent.parent  # RUN_DIR/checkpoints/ckpt_*.pt
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{path}: no config.yaml in {run_dir}, the run directory a checkpoint "
                        f"is read with (RUN_DIR/checkpoints/ckpt_*.pt)")
    return path, run_dir, state


def _policy_weights(cfg, state, ckpt: Path) -> dict:
    from learner.registry import policy_weights

    try:
        return policy_weights(cfg, state) if isinstance(state, dict) else policy_weights(cfg, {})
    except KeyError as missing:
        raise UserError(f"{ckpt} is not a checkpoint of an accord {cfg.learner.algorithm} "
                        f"learner (no {missing} weights)") from None
