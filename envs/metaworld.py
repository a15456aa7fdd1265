"""Meta-World v3 manipulation tasks (Yu et al. 2019, "Meta-World: A Benchmark and Evaluation
for Multi-Task and Meta Reinforcement Learning"), the MT10/MT50 setting of PCGrad (Yu et al.
2020, papers/003) and of multi-task SAC.

A task is one Meta-World env name ("reach-v3"). Each such env has 50 parametric variations
(object and goal positions, Meta-World's ``rand_vec``); MT1/MT10/MT50 train on all 50 of every
env, and so does this kind: at every reset an env draws one of its 50 variations from the
seeded RNG and ``set_task``s it. Observations are the full 39-dimensional state with the goal
visible (the MT setting; ``partially_observable=False``), float32. Episodes last 500 steps and
end by truncation only: Meta-World never terminates, and success is reported in
``info["success"]``; an episode counts as a success if that flag was set at any of its steps
(as garage and mtrl count it).

Choices made here, where Meta-World leaves them open:

* The 50 variations of an env are drawn as ``metaworld.MT1(name, seed=variation_seed)`` draws
  them (50 resets of the env with a free ``rand_vec``), not from one whole ``MT10(seed)`` /
  ``MT50(seed)`` object: those draw every env's variations in sequence from one global RNG,
  which takes ~10 s (MT10) and ~60 s (MT50) per actor, where MT1 takes ~1 s for the one env an
  actor runs. The variations come from the same ``_random_reset_space`` (the benchmarks pass
  each env the same arguments), so only which 50 draws differ. ``variation_seed`` is a
  property of the run, not of the actor: every actor of a task sees the same 50.
* ``benchmark`` picks which env names are valid (MT10: its 10; MT50, MT1 and None: all 50).
* Envs are stepped in-process one after another: a rollout actor has one CPU.
"""

from __future__ import annotations

import difflib
import functools

import numpy as np

from .base import RawStep, TrackedVecEnv
from .spec import EnvSpec

BENCHMARKS = ("MT1", "MT10", "MT50")
OBSERVATION_DIM = 39  # hand (4) + two objects (14) + previous frame (18) + goal (3)
ACTION_DIM = 4  # end-effector xyz displacement + gripper
MAX_EPISODE_STEPS = 500  # Meta-World's max_path_length, the benchmark horizon


def _env_dict():
    # Imported on first use: metaworld imports MuJoCo (~2 s), which Atari runs never need.
    import metaworld.env_dict

    return metaworld.env_dict


def benchmark_tasks(benchmark: str) -> tuple[str, ...]:
    """The env names of MT10 or MT50, in the benchmark's own order (its task ids)."""
    env_dict = _env_dict()
    if benchmark == "MT10":
        return tuple(env_dict.MT10_V3)
    if benchmark == "MT50":
        return tuple(env_dict.MT50_V3)
    if benchmark == "MT1":
        raise ValueError("benchmark 'MT1' has no fixed task list: it trains the one env you name")
    raise ValueError(f"unknown Meta-World benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")


def normalize_task(name: str) -> str:
    """"reach-v3", " Reach-V3 " and "reach" all become "reach-v3"."""
    key = name.strip().lower()
    all_envs = _env_dict().ALL_V3_ENVIRONMENTS
    if key not in all_envs and f"{key}-v3" in all_envs:
        key = f"{key}-v3"
    if key not in all_envs:
        close = difflib.get_close_matches(key, list(all_envs), n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ValueError(
            f"unknown Meta-World env {name!r}{hint}; names look like 'reach-v3' "
            f"(benchmark_tasks('MT50') lists all {len(all_envs)})"
        )
    return key


def validate_task(name: str) -> None:
    """Checks the env name against Meta-World's v3 list; creates no env."""
    normalize_task(name)


def _check_benchmark(name: str, benchmark: str | None) -> None:
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise ValueError(f"unknown Meta-World benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    if benchmark == "MT10" and name not in benchmark_tasks("MT10"):
        raise ValueError(f"Meta-World env {name!r} is not one of the MT10 tasks {benchmark_tasks('MT10')}")


@functools.lru_cache(maxsize=None)
def _variations(name: str, variation_seed: int) -> tuple:
    """The env's 50 parametric variations (``metaworld.Task``s), goal visible (MT setting)."""
    import metaworld

    return tuple(metaworld.MT1(name, seed=variation_seed).train_tasks)


class MetaWorldVecEnv(TrackedVecEnv):
    """``num_envs`` copies of one Meta-World env; observations float32 [M, 39 (+ one-hot)],
    actions float [M, 4] in [-1, 1] (Meta-World's own bounds, so no rescaling happens).

    Options:
        benchmark: "MT10", "MT50", "MT1" or None; the env must belong to it.
        task_one_hot: append a one-hot of task_id of this length (10 for MT10) to each obs.
        max_episode_steps: truncate each episode after this many steps (the benchmarks: 500).
        variation_seed: seeds the draw of the env's 50 variations; keep it equal across
            actors so all of them train on the same variations.
    """

    observation_dtype = np.dtype(np.float32)

    def __init__(
        self,
        task_name: str,
        task_id: int,
        num_envs: int,
        seed: int,
        *,
        benchmark: str | None = "MT10",
        task_one_hot: int = 0,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        variation_seed: int = 0,
    ) -> None:
        name = normalize_task(task_name)
        _check_benchmark(name, benchmark)
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        super().__init__(name, task_id, num_envs, seed, task_one_hot)
        self.benchmark = benchmark
        self.max_episode_steps = max_episode_steps
        self._env_cls = _env_dict().ALL_V3_ENVIRONMENTS[name]
        self._tasks = _variations(name, variation_seed)
        self._task_rng = np.random.default_rng(seed)
        # Which of the 50 variations each env's current episode runs.
        self.variations = np.zeros(num_envs, dtype=np.int64)
        self._envs: list = []
        self._create()
        env = self._envs[0]
        self._set_action_box(env.action_space.low, env.action_space.high, env.action_space.dtype)
        if env.observation_space.shape != (OBSERVATION_DIM,):
            raise ValueError(f"Meta-World env {name!r} observes {env.observation_space.shape}, expected ({OBSERVATION_DIM},)")
        self._set_observation_shape(env.observation_space.shape)

    def _create(self) -> None:
        self._envs = []
        for _ in range(self.num_envs):
            env = self._env_cls()
            # Meta-World truncates (and refuses further steps) at max_path_length itself.
            env.max_path_length = self.max_episode_steps
            env.set_task(self._tasks[0])  # spaces need a task; reset draws the real one
            self._envs.append(env)

    def _close_raw(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []

    def _reset_one(self, i: int) -> np.ndarray:
        k = int(self._task_rng.integers(len(self._tasks)))
        env = self._envs[i]
        env.set_task(self._tasks[k])
        obs, _ = env.reset()
        self.variations[i] = k
        return obs

    def _reset_all(self, seed: int) -> np.ndarray:
        # Meta-World's own resets are deterministic given the variation; the only randomness
        # is the draw of variations, so this generator makes the run reproducible.
        self._task_rng = np.random.default_rng(seed)
        return np.stack([self._reset_one(i) for i in range(self.num_envs)]).astype(np.float32)

    def _step_raw(self, actions: np.ndarray) -> RawStep:
        m = self.num_envs
        obs = np.empty((m, OBSERVATION_DIM), dtype=np.float32)
        final_obs = np.empty_like(obs)
        rewards = np.empty(m, dtype=np.float64)
        terminated = np.zeros(m, dtype=bool)
        truncated = np.zeros(m, dtype=bool)
        success = np.zeros(m, dtype=bool)
        for i, env in enumerate(self._envs):
            o, rewards[i], terminated[i], truncated[i], info = env.step(actions[i])
            success[i] = bool(info["success"])
            final_obs[i] = o
            obs[i] = self._reset_one(i) if terminated[i] or truncated[i] else o
        return RawStep(obs, rewards, terminated, truncated, final_obs, success)


def make_vec_env(task_name: str, task_id: int, num_envs: int, seed: int, **options) -> MetaWorldVecEnv:
    return MetaWorldVecEnv(task_name, task_id, num_envs, seed, **options)


def describe(task_name: str, *, benchmark: str | None = "MT10", **_options) -> EnvSpec:
    """The `EnvSpec` of a Meta-World task (without the one-hot, which ``envs.describe`` adds);
    every v3 env has the same spaces, so no env is made."""
    _check_benchmark(normalize_task(task_name), benchmark)
    return EnvSpec((OBSERVATION_DIM,), np.dtype(np.float32), action_dim=ACTION_DIM)
