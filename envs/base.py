"""The vectorised-environment contract that rollout actors are written against.

A rollout actor owns one task and steps ``num_envs`` copies of it through a :class:`VecEnv`.
Autoreset is *same-step*: when an episode ends, ``StepResult.obs`` already holds the first
observation of the next episode, so an actor never spends a step on a reset.

:class:`TrackedVecEnv` holds what every concrete kind shares: per-env running return and
length (so :class:`EpisodeStats` report the raw, unclipped score whatever the training reward
is) and recovery from an underlying env that raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeStats:
    task_id: int
    task_name: str
    score: float  # raw (unclipped) episode return
    length: int  # agent steps
    success: float | None = None  # 1.0/0.0 where the env reports success (Meta-World), else None


@dataclass
class StepResult:
    obs: np.ndarray  # [M, *obs_shape]; where an episode ended, already the next episode's first obs
    rewards: np.ndarray  # float32 [M], the training reward (clipped for Atari when clip_rewards)
    terminated: np.ndarray  # bool [M]
    truncated: np.ndarray  # bool [M]
    episodes: list[EpisodeStats]  # episodes that finished this step, in env order


@runtime_checkable
class VecEnv(Protocol):
    num_envs: int
    observation_shape: tuple[int, ...]
    observation_dtype: np.dtype
    num_actions: int
    task_id: int
    task_name: str

    def reset(self, seed: int | None = None) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> StepResult: ...

    def close(self) -> None: ...


class TrackedVecEnv:
    """Episode bookkeeping and error recovery around an underlying vector env.

    Subclasses set the spaces, keep their underlying env in ``self._env`` and implement
    ``_create`` / ``_reset_all`` / ``_step_raw``.

    Error recovery: if the underlying env raises inside ``step``, the whole underlying vector
    env is closed and rebuilt (one broken copy can leave shared state such as ALE's thread pool
    inconsistent, so rebuilding only that copy is not safe), ``env_errors`` is incremented and
    the step returns a result in which *every* env is marked truncated, with reward 0, the
    fresh reset observation as ``obs``, and no :class:`EpisodeStats` (the interrupted episodes
    are dropped: their scores would be biased low). Callers treat it like any truncation.
    After ``max_consecutive_errors`` failed steps with no good step between them the env is
    considered broken and a ``RuntimeError`` is raised instead of looping forever.
    """

    max_consecutive_errors = 3

    num_envs: int
    observation_shape: tuple[int, ...]
    observation_dtype: np.dtype
    num_actions: int

    def __init__(self, task_name: str, task_id: int, num_envs: int, seed: int) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.task_name = task_name
        self.task_id = task_id
        self.num_envs = num_envs
        self.env_errors = 0
        self._consecutive_errors = 0
        # All reset seeds (first reset, later resets, rebuilds) come from this generator, so a
        # run is reproducible from the one seed handed to the factory.
        self._seed_rng = np.random.default_rng(seed)
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._closed = False
        self._needs_reset = True

    # --- to implement -------------------------------------------------------------------------
    def _create(self) -> None:
        raise NotImplementedError

    def _reset_all(self, seed: int) -> np.ndarray:
        raise NotImplementedError

    def _step_raw(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns (obs, raw_rewards, terminated, truncated) with same-step autoreset."""
        raise NotImplementedError

    def _close_raw(self) -> None:
        """Close the underlying env held in ``self._env`` (if any)."""
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None

    def _training_reward(self, raw: np.ndarray) -> np.ndarray:
        """float32 rewards, sign-clipped to [-1, 1] when the subclass sets ``clip_rewards``."""
        rewards = raw.astype(np.float32)
        if getattr(self, "clip_rewards", False):
            np.clip(rewards, -1.0, 1.0, out=rewards)
        return rewards

    # --- the VecEnv contract ------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Resets all envs; env i gets seed ``seed + i`` (a fresh derived seed when None)."""
        if self._closed:
            raise RuntimeError(f"env {self.task_name!r} is closed")
        self._returns[:] = 0.0
        self._lengths[:] = 0
        obs = self._reset_all(self._next_seed() if seed is None else seed)
        self._needs_reset = False
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        if self._needs_reset:
            # Caught here: the recovery path below would otherwise treat it as an env failure.
            raise RuntimeError(
                f"env {self.task_name!r}: reset() must come before step(), and not after close()"
            )
        actions = self._check_actions(actions)
        try:
            obs, raw, terminated, truncated = self._step_raw(actions)
        except Exception as exc:  # noqa: BLE001 - any env failure is recovered from, see class doc
            return self._recover(exc)
        self._consecutive_errors = 0

        self._returns += raw
        self._lengths += 1
        done = terminated | truncated
        episodes = [
            EpisodeStats(self.task_id, self.task_name, float(self._returns[i]), int(self._lengths[i]))
            for i in np.flatnonzero(done)
        ]
        self._returns[done] = 0.0
        self._lengths[done] = 0
        return StepResult(obs, self._training_reward(raw), terminated, truncated, episodes)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._needs_reset = True
            self._close_raw()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- helpers ------------------------------------------------------------------------------
    def _next_seed(self) -> int:
        # Env i is seeded with seed + i; keep the whole range inside int32 for ALE.
        return int(self._seed_rng.integers(0, 2**31 - 1 - self.num_envs))

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        # A bad action is the caller's bug: raise here, before the recovery path could mistake
        # it for an env failure and silently rebuild the env.
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ValueError(
                f"actions must be an int array of shape ({self.num_envs},), "
                f"got {actions.dtype} {actions.shape}"
            )
        if actions.min() < 0 or actions.max() >= self.num_actions:
            raise ValueError(f"actions must be in [0, {self.num_actions}), got {actions}")
        return actions

    def _recover(self, exc: Exception) -> StepResult:
        self.env_errors += 1
        self._consecutive_errors += 1
        if self._consecutive_errors > self.max_consecutive_errors:
            raise RuntimeError(
                f"env {self.task_name!r} (task {self.task_id}) failed on "
                f"{self._consecutive_errors} consecutive steps, giving up"
            ) from exc
        log.warning(
            "env %r (task %d) raised during step; rebuilding it (env_errors=%d)",
            self.task_name, self.task_id, self.env_errors, exc_info=exc,
        )
        try:
            self._close_raw()
        except Exception:  # noqa: BLE001 - the broken env may not close cleanly; it is dropped anyway
            log.debug("closing the broken env failed", exc_info=True)
        self._create()
        obs = self.reset()
        m = self.num_envs
        return StepResult(
            obs=obs,
            rewards=np.zeros(m, dtype=np.float32),
            terminated=np.zeros(m, dtype=bool),
            truncated=np.ones(m, dtype=bool),
            episodes=[],
        )
