"""Transition worker: the SAC side of a rollout actor. It steps M envs of each of its tasks with
the tanh-Gaussian policy and cuts the experience into chunks of transitions for the replay:

    obs         [N, D] float32     s_t
    action      [N, A] float32     a_t in [-1, 1]^A (the env rescales to its bounds)
    reward      [N]    float32     r_t
    next_obs    [N, D] float32     s_{t+1}; at an episode end the episode's own last
                                   observation (`final_obs`), never the next episode's first
    terminated  [N]    bool        only this cuts the bootstrap: SAC bootstraps through a
    truncated   [N]    bool        time limit, since the state itself did not end
    version     [N]    int64       weights that chose a_t
    task_id     [N]    int64
    episodes    [E, 4] float64     (task_id, raw score, length, success or NaN) of episodes that ended

with N = T x M rows per chunk, step-major (row t*M + m is env m at step t).
"""
from __future__ import annotations

import numpy as np
import torch

from actors.policy import GaussianPolicy
from actors.rollout import actor_seed, episode_row, make_actor_env


class TransitionWorker:
    def __init__(self, cfg, actor_index: int, spec, reseed: int = 0):
        self.cfg = cfg
        self.actor_index = actor_index
        seed = actor_seed(cfg, actor_index, reseed)
        self.env = make_actor_env(cfg, actor_index, seed)
        self.policy = GaussianPolicy(cfg, spec, seed)
        self.task_ids = np.asarray(self.env.task_ids, dtype=np.int64)
        self.task_id = int(self.task_ids[0])
        self._task_ids = torch.as_tensor(self.task_ids)
        self.obs = self.env.reset(seed=seed)
        self.steps = 0

    @property
    def version(self) -> int:
        return self.policy.version

    def set_weights(self, version: int, weights: dict[str, np.ndarray]) -> None:
        self.policy.set_weights(version, weights)

    def collect(self) -> dict:
        T, M = self.cfg.actors.unroll_length, self.env.num_envs
        obs = np.empty((T, M, *self.obs.shape[1:]), dtype=np.float32)
        next_obs = np.empty_like(obs)
        actions = np.empty((T, M, self.policy.action_dim), dtype=np.float32)
        rewards = np.empty((T, M), dtype=np.float32)
        terminated = np.empty((T, M), dtype=bool)
        truncated = np.empty((T, M), dtype=bool)
        episodes = []
        for t in range(T):
            obs[t] = self.obs
            actions[t] = self.policy.act(self.obs, self._task_ids)
            result = self.env.step(actions[t])
            rewards[t], terminated[t], truncated[t] = result.rewards, result.terminated, result.truncated
            next_obs[t] = result.final_obs
            episodes += [episode_row(e) for e in result.episodes]
            self.obs = result.obs
        self.steps += T * M
        N = T * M
        return {
            "obs": obs.reshape(N, *obs.shape[2:]), "action": actions.reshape(N, -1),
            "reward": rewards.reshape(N), "next_obs": next_obs.reshape(N, *obs.shape[2:]),
            "terminated": terminated.reshape(N), "truncated": truncated.reshape(N),
            "version": np.full(N, self.version, dtype=np.int64),
            "task_id": np.tile(self.task_ids, T),
            "episodes": np.asarray(episodes, dtype=np.float64).reshape(-1, 4),
        }

    @property
    def env_errors(self) -> int:
        return getattr(self.env, "env_errors", 0)

    def close(self) -> None:
        self.env.close()
