"""The vectorised-environment contract that rollout actors are written against.

A rollout actor steps ``num_envs`` envs through a :class:`VecEnv`: copies of one task
(:class:`TrackedVecEnv`) or several tasks side by side (``envs.multitask.MultiTaskVecEnv``);
``task_ids`` says which task each env runs. Autoreset is *same-step*: when an episode ends,
``StepResult.obs`` already holds the first observation of the next episode, so an actor never
spends a step on a reset, and ``StepResult.final_obs`` keeps the ended episode's last
observation, which an off-policy learner needs to bootstrap through a truncation.

Actions are either Discrete (``num_actions`` set: int [M]) or continuous (``action_dim`` set:
float [M, action_dim] in [-1, 1], rescaled linearly here to the env's own Box bounds, so a
tanh policy needs no knowledge of them).

:class:`TrackedVecEnv` holds what every concrete kind shares: per-env running return, length
and success (so :class:`EpisodeStats` report the raw, unclipped score whatever the training
reward is), the action checks, the optional task one-hot on vector observations, and recovery
from an underlying env that raises.
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
    # [M, *obs_shape]: where an episode ended this step, its last observation (before the
    # autoreset replaced it); elsewhere equal to obs. None for kinds that do not keep it (Atari).
    final_obs: np.ndarray | None = None


@dataclass
class RawStep:
    """What a kind's ``_step_raw`` returns, observations without the task one-hot."""

    obs: np.ndarray  # [M, *raw_obs_shape], same-step autoreset
    rewards: np.ndarray  # [M] raw rewards
    terminated: np.ndarray  # bool [M]
    truncated: np.ndarray  # bool [M]
    final_obs: np.ndarray | None = None  # see StepResult.final_obs
    success: np.ndarray | None = None  # bool [M]: the env reported success at this step


@runtime_checkable
class VecEnv(Protocol):
    num_envs: int
    observation_shape: tuple[int, ...]
    observation_dtype: np.dtype
    num_actions: int | None  # Discrete actions: int [M] in [0, num_actions); None if continuous
    action_dim: int | None  # continuous actions: float [M, action_dim] in [-1, 1]; None if discrete
    task_ids: np.ndarray  # int64 [M], the task of each env
    env_errors: int  # underlying env failures recovered from so far

    def reset(self, seed: int | None = None) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> StepResult: ...

    def close(self) -> None: ...


class TrackedVecEnv:
    """Episode bookkeeping, action checks and error recovery around an underlying vector env.

    Subclasses keep their underlying env in ``self._env``, implement ``_create`` /
    ``_reset_all`` / ``_step_raw``, and declare their spaces with ``_set_observation_shape``
    and either ``num_actions`` or ``_set_action_box``.

    Task one-hot (``task_one_hot=K > 0``): every observation, ``final_obs`` included, gets a
    float32 one-hot of ``task_id`` of length K appended, so one network can tell tasks apart
    (Yu et al. 2019, Meta-World's MT10/MT50 observations). Vector observations only.

    Error recovery: if the underlying env raises inside ``step``, the whole underlying vector
    env is closed and rebuilt (one broken copy can leave shared state such as ALE's thread pool
    inconsistent, so rebuilding only that copy is not safe), ``env_errors`` is incremented and
    the step returns a result in which *every* env is marked truncated, with reward 0, the
    fresh reset observation as ``obs``, the last observation each env returned as
    ``final_obs``, and no :class:`EpisodeStats` (the interrupted episodes are dropped: their
    scores would be biased low). Callers treat it like any truncation. After
    ``max_consecutive_errors`` failed steps with no good step between them the env is
    considered broken and a ``RuntimeError`` is raised instead of looping forever.
    """

    max_consecutive_errors = 3
    # Continuous actions may overshoot [-1, 1] by float rounding (tanh in float32, a cast);
    # anything further out is a caller bug.
    action_slack = 1e-5
    # Whether _step_raw fills RawStep.final_obs; when False StepResult.final_obs is None.
    keeps_final_obs = True

    num_envs: int
    observation_shape: tuple[int, ...]
    observation_dtype: np.dtype
    num_actions: int | None = None
    action_dim: int | None = None

    def __init__(self, task_name: str, task_id: int, num_envs: int, seed: int, task_one_hot: int = 0) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if task_one_hot < 0:
            raise ValueError(f"task_one_hot must be >= 0 (0: off), got {task_one_hot}")
        if task_one_hot and not 0 <= task_id < task_one_hot:
            raise ValueError(
                f"task {task_name!r}: task_id {task_id} does not fit a one-hot of length {task_one_hot}"
            )
        self.task_name = task_name
        self.task_id = task_id
        self.task_ids = np.full(num_envs, task_id, dtype=np.int64)
        self.num_envs = num_envs
        self.task_one_hot = task_one_hot
        self.env_errors = 0
        self._consecutive_errors = 0
        # All reset seeds (first reset, later resets, rebuilds) come from this generator, so a
        # run is reproducible from the one seed handed to the factory.
        self._seed_rng = np.random.default_rng(seed)
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._succeeded = np.zeros(num_envs, dtype=bool)
        self._last_obs: np.ndarray | None = None  # raw, for final_obs when a step fails
        self._closed = False
        self._needs_reset = True

    # --- to implement -------------------------------------------------------------------------
    def _create(self) -> None:
        raise NotImplementedError

    def _reset_all(self, seed: int) -> np.ndarray:
        raise NotImplementedError

    def _step_raw(self, actions: np.ndarray) -> RawStep:
        """One step of all envs with same-step autoreset; ``actions`` already checked (and,
        when continuous, rescaled to the Box bounds)."""
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

    # --- spaces, for subclasses ---------------------------------------------------------------
    def _set_observation_shape(self, raw_shape: tuple[int, ...]) -> None:
        raw_shape = tuple(int(d) for d in raw_shape)
        if self.task_one_hot and len(raw_shape) != 1:
            raise ValueError(
                f"task {self.task_name!r}: task_one_hot needs vector observations, got shape {raw_shape}"
            )
        self.observation_shape = (raw_shape[0] + self.task_one_hot,) if self.task_one_hot else raw_shape

    def _set_action_box(self, low: np.ndarray, high: np.ndarray, dtype: np.dtype) -> None:
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if low.ndim != 1 or low.shape != high.shape:
            raise ValueError(f"task {self.task_name!r}: only flat Box action spaces are supported, got {low.shape}")
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
            raise ValueError(
                f"task {self.task_name!r}: Box action bounds must be finite with low < high "
                f"to map [-1, 1] onto them, got low={low}, high={high}"
            )
        self.action_dim = int(low.shape[0])
        self._action_low, self._action_high, self._action_dtype = low, high, np.dtype(dtype)

    # --- the VecEnv contract ------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Resets all envs; env i gets seed ``seed + i`` (a fresh derived seed when None)."""
        if self._closed:
            raise RuntimeError(f"env {self.task_name!r} is closed")
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._succeeded[:] = False
        obs = self._reset_all(self._next_seed() if seed is None else seed)
        self._last_obs = obs
        self._needs_reset = False
        return self._with_one_hot(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        if self._needs_reset:
            # Caught here: the recovery path below would otherwise treat it as an env failure.
            raise RuntimeError(
                f"env {self.task_name!r}: reset() must come before step(), and not after close()"
            )
        actions = self._check_actions(actions)
        try:
            raw = self._step_raw(actions)
        except Exception as exc:  # noqa: BLE001 - any env failure is recovered from, see class doc
            return self._recover(exc)
        self._consecutive_errors = 0
        self._last_obs = raw.obs

        self._returns += raw.rewards
        self._lengths += 1
        if raw.success is not None:
            self._succeeded |= raw.success
        done = raw.terminated | raw.truncated
        episodes = [
            EpisodeStats(
                self.task_id, self.task_name, float(self._returns[i]), int(self._lengths[i]),
                None if raw.success is None else float(self._succeeded[i]),
            )
            for i in np.flatnonzero(done)
        ]
        self._returns[done] = 0.0
        self._lengths[done] = 0
        self._succeeded[done] = False
        return StepResult(
            self._with_one_hot(raw.obs), self._training_reward(raw.rewards), raw.terminated,
            raw.truncated, episodes,
            None if raw.final_obs is None else self._with_one_hot(raw.final_obs),
        )

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

    def _with_one_hot(self, obs: np.ndarray) -> np.ndarray:
        if not self.task_one_hot:
            return obs
        one_hot = np.zeros((len(obs), self.task_one_hot), dtype=np.float32)
        one_hot[:, self.task_id] = 1.0
        return np.concatenate([obs.astype(np.float32, copy=False), one_hot], axis=1)

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        # A bad action is the caller's bug: raise here, before the recovery path could mistake
        # it for an env failure and silently rebuild the env.
        if self.action_dim is not None:
            return self._check_continuous_actions(actions)
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ValueError(
                f"actions must be an int array of shape ({self.num_envs},), "
                f"got {actions.dtype} {actions.shape}"
            )
        if actions.min() < 0 or actions.max() >= self.num_actions:
            raise ValueError(f"actions must be in [0, {self.num_actions}), got {actions}")
        return actions

    def _check_continuous_actions(self, actions: np.ndarray) -> np.ndarray:
        """[-1, 1] actions, checked, mapped linearly onto [low, high] in the space's dtype."""
        actions = np.asarray(actions)
        expected = (self.num_envs, self.action_dim)
        if actions.shape != expected or actions.dtype.kind != "f":
            raise ValueError(
                f"task {self.task_name!r}: actions must be a float array of shape {expected}, "
                f"got {actions.dtype} {actions.shape}"
            )
        if not np.isfinite(actions).all():
            raise ValueError(f"task {self.task_name!r}: actions must be finite, got {actions}")
        if np.abs(actions).max() > 1.0 + self.action_slack:
            raise ValueError(
                f"task {self.task_name!r}: continuous actions must lie in [-1, 1], got max |a| = "
                f"{np.abs(actions).max()}"
            )
        unit = np.clip(actions.astype(np.float64), -1.0, 1.0)
        scaled = self._action_low + (unit + 1.0) * 0.5 * (self._action_high - self._action_low)
        return scaled.astype(self._action_dtype)

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
        last_obs = self._last_obs
        self._create()
        obs = self.reset()
        m = self.num_envs
        return StepResult(
            obs=obs,
            rewards=np.zeros(m, dtype=np.float32),
            terminated=np.zeros(m, dtype=bool),
            truncated=np.ones(m, dtype=bool),
            episodes=[],
            final_obs=self._with_one_hot(last_obs) if self.keeps_final_obs else None,
        )
