"""Multi-task CartPole for RLlib: one agent per task, each a CartPole with its own pole.

Task k is `CartPoleEnv` with pole half-length `pole_lengths[k]` (gymnasium's default 0.5) and
pole mass `pole_masses[k]` (default 0.1). Agent `task<k>` steps task k; the episode ends when
all tasks have ended, and a task that has ended stops acting. With the policy mapping
`task<k> -> module task<k>` and `SharedEncoderMultiRLModule`, RLlib trains one module per task
over one shared encoder: the per-task gradients meet on the encoder.
"""
from __future__ import annotations

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from ray.rllib.env.multi_agent_env import MultiAgentEnv

DEFAULT_POLE_LENGTHS = (0.25, 0.5, 1.0)


def task_ids(num_tasks: int) -> list[str]:
    return [f"task{k}" for k in range(num_tasks)]


def make_cartpole(length: float = 0.5, masspole: float = 0.1) -> CartPoleEnv:
    """A CartPole whose pole has half-length `length` and mass `masspole`."""
    env = CartPoleEnv()
    env.length = float(length)
    env.masspole = float(masspole)
    # CartPoleEnv caches these two from masspole and length in __init__.
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length
    return env


class MultiTaskCartPole(MultiAgentEnv):
    """`env_config`: `pole_lengths` (list, one task each) and optional `pole_masses`;
    episodes are cut at `max_episode_steps` (default 500, CartPole-v1's limit)."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        config = dict(config or {})
        lengths = list(config.get("pole_lengths", DEFAULT_POLE_LENGTHS))
        masses = list(config.get("pole_masses", [0.1] * len(lengths)))
        if not lengths or len(masses) != len(lengths):
            raise ValueError(f"need one pole mass per pole length, got {masses} for {lengths}")
        self.max_episode_steps = int(config.get("max_episode_steps", 500))
        self.possible_agents = task_ids(len(lengths))
        self.agents = list(self.possible_agents)
        self.envs = {a: gym.wrappers.TimeLimit(make_cartpole(l, m), self.max_episode_steps)
                     for a, l, m in zip(self.possible_agents, lengths, masses)}
        self.observation_spaces = {a: e.observation_space for a, e in self.envs.items()}
        self.action_spaces = {a: e.action_space for a, e in self.envs.items()}

    def reset(self, *, seed=None, options=None):
        self.agents = list(self.possible_agents)
        obs, infos = {}, {}
        for k, (a, env) in enumerate(self.envs.items()):
            obs[a], infos[a] = env.reset(seed=None if seed is None else seed + k)
        return obs, infos

    def step(self, action_dict):
        obs, rew, term, trunc, infos = {}, {}, {}, {}, {}
        for a, action in action_dict.items():
            obs[a], rew[a], term[a], trunc[a], infos[a] = self.envs[a].step(action)
            if term[a] or trunc[a]:
                self.agents.remove(a)
        # Each agent carries its own terminated/truncated flag (what bootstrapping uses).
        term["__all__"] = not self.agents
        trunc["__all__"] = False
        return obs, rew, term, trunc, infos


def multitask_ppo_config(combiner: str = "pcgrad", pole_lengths=DEFAULT_POLE_LENGTHS, *,
                         seed: int = 0, num_env_runners: int = 0, envs_per_runner: int = 1,
                         train_batch_size: int = 1000, minibatch_size: int = 250,
                         num_epochs: int = 6, lr: float = 3e-4, hidden: int = 64,
                         combiner_kwargs: dict | None = None):
    """RLlib PPO on `MultiTaskCartPole`: one module per task over a shared encoder, the
    learner `AccordPPOTorchLearner` with `combiner` ("pcgrad", "sum", ...)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from accord.rllib.learner import AccordPPOTorchLearner, combiner_settings
    from accord.rllib.shared_encoder import SharedEncoderMultiRLModule

    tasks = task_ids(len(pole_lengths))
    kwargs = dict(combiner_kwargs or {})
    if combiner == "pcgrad":
        kwargs.setdefault("seed", seed)
    model = DefaultModelConfig(fcnet_hiddens=[hidden, hidden], fcnet_activation="tanh",
                               vf_share_layers=True)
    return (
        PPOConfig()
        .environment(MultiTaskCartPole, env_config={"pole_lengths": list(pole_lengths)})
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=envs_per_runner)
        .multi_agent(policies=set(tasks), policy_mapping_fn=lambda agent_id, *a, **k: agent_id)
        .rl_module(rl_module_spec=MultiRLModuleSpec(
            multi_rl_module_class=SharedEncoderMultiRLModule,
            rl_module_specs={t: RLModuleSpec(model_config=model) for t in tasks}))
        .learners(learner_class=AccordPPOTorchLearner,
                  learner_config_dict=combiner_settings(combiner, **kwargs))
        .training(train_batch_size_per_learner=train_batch_size, minibatch_size=minibatch_size,
                  num_epochs=num_epochs, lr=lr, grad_clip=0.5)
        .debugging(seed=seed)
    )
