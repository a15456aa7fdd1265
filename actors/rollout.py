"""Rollout worker: M environments of each of its tasks and a CPU copy of the policy (or a call to
an inference server, `infer`), cut into unrolls for IMPALA.

An unroll is a dict of numpy arrays, time-major like the V-trace learner wants:

    obs               [T+1, M, *obs_shape]   obs[0] continues the previous unroll, obs[T] bootstraps
    actions           [T, M] int64
    rewards           [T, M] float32         training rewards (clipped on Atari)
    terminated        [T, M] bool
    truncated         [T, M] bool
    behaviour_logits  [T, M, A] float32      mu, for the V-trace importance ratios
    task_id           [M] int64
    frames, stack_start, heads               instead of obs for stacked image frames (Atari) with
                                             `actors.compact_frames`: each frame once (envs/frame_stack.py)
    version           int                    weights that produced the unroll (the oldest, see below)
    episodes          [E, 4] float64         (task_id, raw score, length, success or NaN) of episodes that ended
    teacher_probs/<n> [T, M, A] float32      only for distill terms whose teacher the env holds
                                             (the gridworld's tabular q_aux / q_main): pi_teacher(.|x_t)

With local inference weights change only between unrolls, so every step of one unroll has the
same behaviour version. An inference server (actors/inference_server.py) serves many actors and
adopts a new version between two of its batches, which may fall inside an unroll. V-trace stays
right either way: its ratios pi/mu read mu from `behaviour_logits`, recorded per step from the
very forward that chose the step's action, whichever weights made it. `version` only measures
the policy lag, and an unroll that spans two versions records the older one, so the lag is
never under-reported.

Sampling: local inference draws with `torch.multinomial` from the actor's generator; with a
server the actor draws the same random numbers from the same generator and sends them along
(actors/sampling.py), so the actions equal local inference's for the same weights and seed.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from actors.policy import policy_network
from actors.sampling import sampling_noise
from envs import make_multitask_vec_env, make_vec_env
from envs.frame_stack import compact, is_frame_stack
from envs.gridworld_teacher import RECORDED_TEACHERS


Infer = Callable[[np.ndarray, np.ndarray, np.ndarray], dict]


class RolloutWorker:
    """`infer(obs, task_ids, noise) -> {actions, logits, version}`: an inference server's step
    (actors/inference_server.py); None: the worker holds its own copy of the policy."""

    def __init__(self, cfg, actor_index: int, spec, reseed: int = 0, infer: Infer | None = None):
        self.cfg = cfg
        self.actor_index = actor_index
        seed = actor_seed(cfg, actor_index, reseed)
        self.env = make_actor_env(cfg, actor_index, seed)
        self.task_id = int(self.env.task_ids[0])
        self.infer = infer
        self.model = policy_network(cfg, spec).eval() if infer is None else None
        self.num_actions = spec.num_actions
        self.version = -1
        self.generator = torch.Generator().manual_seed(seed)
        self.obs = self.env.reset(seed=seed)
        self.compact_frames = cfg.actors.compact_frames and is_frame_stack(self.obs)
        self._task_ids = torch.as_tensor(self.env.task_ids, dtype=torch.int64)
        self.teachers = recorded_teachers(cfg)
        self.steps = 0

    def set_weights(self, version: int, weights: dict[str, np.ndarray]) -> None:
        self.model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
        self.version = version

    @torch.inference_mode()
    def unroll(self) -> dict:
        T, M = self.cfg.actors.unroll_length, self.env.num_envs
        obs = np.empty((T + 1, M, *self.obs.shape[1:]), dtype=self.obs.dtype)
        actions = np.empty((T, M), dtype=np.int64)
        rewards = np.empty((T, M), dtype=np.float32)
        terminated = np.empty((T, M), dtype=bool)
        truncated = np.empty((T, M), dtype=bool)
        logits_buf = np.empty((T, M, self.num_actions), dtype=np.float32)
        teacher_bufs = {name: np.empty((T, M, self.num_actions), dtype=np.float32)
                        for name in self.teachers}
        episodes = []
        oldest = None  # the oldest weights that acted in this unroll
        for t in range(T):
            obs[t] = self.obs
            for name, options in self.teachers.items():
                teacher_bufs[name][t] = self.env.teacher_probs(**options)
            action, logits = self._act() if self.infer is None else self._act_on_server()
            oldest = self.version if oldest is None else min(oldest, self.version)
            result = self.env.step(action)
            actions[t], logits_buf[t] = action, logits
            rewards[t], terminated[t], truncated[t] = result.rewards, result.terminated, result.truncated
            episodes += [episode_row(e) for e in result.episodes]
            self.obs = result.obs
        obs[T] = self.obs
        self.steps += T * M
        return {
            **(compact(obs) if self.compact_frames else {"obs": obs}), "actions": actions, "rewards": rewards, "terminated": terminated,
            "truncated": truncated, "behaviour_logits": logits_buf,
            "task_id": self._task_ids.numpy().copy(), "version": oldest,
            "episodes": np.asarray(episodes, dtype=np.float64).reshape(-1, 4),
            **{f"teacher_probs/{name}": buf for name, buf in teacher_bufs.items()},
        }

    def _act(self) -> tuple[np.ndarray, np.ndarray]:
        """Local inference: (actions [M], behaviour logits [M, A])."""
        logits, _ = self.model(torch.from_numpy(self.obs), self._task_ids)
        action = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator).squeeze(1)
        return action.numpy(), logits.numpy()

    def _act_on_server(self) -> tuple[np.ndarray, np.ndarray]:
        """Server inference: the draws come from this worker's generator, the forward from the
        server, whose reply names the version that made it."""
        noise = sampling_noise(self.generator, self.env.num_envs, self.num_actions)
        reply = self.infer(self.obs, self._task_ids.numpy(), noise.numpy())
        self.version = reply["version"]
        return reply["actions"], reply["logits"]

    @property
    def env_errors(self) -> int:
        return getattr(self.env, "env_errors", 0)

    def close(self) -> None:
        self.env.close()


def recorded_teachers(cfg) -> dict[str, dict]:
    """Aux name -> `teacher_probs` options of the distill terms whose teacher the actors record."""
    return {name: {"source": a.teacher, "temperature": a.temperature, "invert": a.invert}
            for name, a in cfg.learner.aux.items()
            if (a.kind or name) == "distill" and a.teacher in RECORDED_TEACHERS}


def episode_row(episode) -> tuple[float, float, float, float]:
    """(task_id, raw score, length, success), success NaN where the env has none."""
    success = float("nan") if episode.success is None else float(episode.success)
    return (episode.task_id, episode.score, episode.length, success)


def actor_task_ids(num_tasks: int, num_actors: int, actor_index: int) -> list[int]:
    """The tasks one actor steps: task i mod K with at least as many actors as tasks (several
    actors share a task), else every task k with k mod N == i (each actor holds several)."""
    if num_actors >= num_tasks:
        return [actor_index % num_tasks]
    return list(range(actor_index, num_tasks, num_actors))


def actor_seed(cfg, actor_index: int, reseed: int = 0) -> int:
    """The seed of one actor's envs and action sampling. Its env copies reset with seed + j for
    j below its number of copies (envs/multitask.py), so actors are spaced by the most copies
    one holds: no two env copies of a fleet share a seed. `reseed` (how often Ray restarted
    the actor) moves a restarted actor past the whole fleet's seeds, so it does not replay its
    first episodes."""
    num_actors = max(cfg.actors.num_actors, 1)
    copies = cfg.env.envs_per_actor * len(actor_task_ids(len(cfg.env.tasks), num_actors, 0))
    slot = reseed * num_actors + actor_index
    return (cfg.run.seed * 100_003 + slot * copies) % 2**31


def make_actor_env(cfg, actor_index: int, seed: int):
    """`env.envs_per_actor` envs of each of the actor's tasks, as one vector env."""
    task_ids = actor_task_ids(len(cfg.env.tasks), cfg.actors.num_actors, actor_index)
    names = [cfg.env.tasks[k] for k in task_ids]
    if len(task_ids) == 1:
        return make_vec_env(cfg.env.kind, names[0], task_ids[0], cfg.env.envs_per_actor, seed,
                            **env_options(cfg))
    return make_multitask_vec_env(cfg.env.kind, names, task_ids, cfg.env.envs_per_actor, seed,
                                  **env_options(cfg))


def env_options(cfg) -> dict:
    """The options `make_vec_env` / `describe` take for this config."""
    if cfg.env.kind == "atari":
        return {"full_action_space": cfg.env.full_action_space, "sticky_actions": cfg.env.sticky_actions,
                "clip_rewards": cfg.env.clip_rewards, "max_episode_frames": cfg.env.max_episode_frames}
    # SAC's one network tells tasks apart by the one-hot id in the observation (MT-SAC);
    # Meta-World's MT10/MT50 append it whatever the algorithm, as the benchmark defines them.
    one_hot = len(cfg.env.tasks) if (len(cfg.env.tasks) > 1 and (
        cfg.learner.algorithm == "sac" or cfg.env.kind == "metaworld")) else 0
    if cfg.env.kind == "metaworld":
        return {"benchmark": cfg.env.benchmark, "task_one_hot": one_hot}
    return {"task_one_hot": one_hot} if one_hot else {}

