"""accord against RLlib (Ray 2.60, new API stack) on the same machine, measured side by side.

1. Breakout learner throughput: accord IMPALA (its actor fleet, queue and learner) and RLlib
   IMPALA with the same number of actors / env runners, the same envs per actor, the same
   unroll length and batch (unrolls per update), the learner on the same device, and the same
   preprocessing (Machado et al. 2018 as in `envs/atari.py`: frameskip 4 with max-pooling,
   84x84 grayscale, 4 stacked frames, sticky actions 0.25, up to 30 no-ops, rewards clipped),
   from the same C++ code: ale-py's AtariVectorEnv, one per RLlib env (`RLlibBreakout`), one
   per accord actor holding all its envs. RLlib's network is the Nature CNN like accord's. Reported: frames/s consumed by each learner (env steps trained
   x frameskip), after a warm-up, and accord / RLlib.
2. CartPole-v1 to a mean return of 150: accord IMPALA (`configs/cartpole.yaml` through
   `accord train`, mean of the last 100 episodes), RLlib IMPALA and RLlib PPO (RLlib's own
   100-episode `episode_return_mean`, the settings of RLlib's tuned CartPole examples, as many
   env runners and envs as accord's actors). Seconds from the start of training, with the
   workers up: accord's `wall_time` column (the clock starts once its actors are created),
   RLlib's clock starts at the first `train()` after `build_algo()`. Each side also gets a
   limit; one that does not reach 150 in it is reported as not reached.

    accord bench peer [--seconds 30] [--actors 1] [--envs 8] [--cartpole-limit 300]
"""
from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import ray
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
TARGET = 150.0
WARMUP_SECONDS = 10.0  # or the measured seconds where fewer: a short smoke run warms up briefly


def warmup_seconds(seconds: float) -> float:
    return min(WARMUP_SECONDS, seconds)


# RLlib IMPALA's `train()` returns after at least `min_time_s_per_iteration` seconds, 10 by
# default: a shorter measured window gets iterations no longer than itself, and the CartPole
# clock one-second iterations (at 10 s, a time to 150 could only read 10, 20, 30, ... s).
RLLIB_IMPALA_ITERATION_SECONDS = 10.0
CARTPOLE_ITERATION_SECONDS = 1.0
NATURE_CNN = [[32, [8, 8], 4], [64, [4, 4], 2], [64, [3, 3], 1]]


# ---- Breakout: the same preprocessing for RLlib's env runners --------------------------------

class RLlibBreakout(gym.Env):
    """One Breakout env for an RLlib env runner, preprocessed by the same C++ code as accord's
    actors: ale-py's AtariVectorEnv (here with one env), rewards clipped to [-1, 1] as accord
    trains. Observations are [84, 84, 4] float32 in [-1, 1]: RLlib's CNN takes channels last
    and float input (as RLlib's own Atari wrapper gives it), accord's takes uint8."""

    def __init__(self, config: dict | None = None):
        from ale_py.vector_env import AtariVectorEnv, AutoresetMode

        config = dict(config or {})
        self._env = AtariVectorEnv(
            "breakout", 1, num_threads=1,
            max_num_frames_per_episode=int(config.get("max_episode_frames", 108_000)),
            repeat_action_probability=float(config.get("sticky_actions", 0.25)),
            full_action_space=False, autoreset_mode=AutoresetMode.SAME_STEP, noop_max=30,
            reward_clipping=True)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (84, 84, 4), np.float32)
        self.action_space = gym.spaces.Discrete(int(self._env.single_action_space.n))

    def reset(self, *, seed=None, options=None):
        obs, _ = self._env.reset(seed=seed)
        return self._image(obs), {}

    def step(self, action):
        obs, rew, term, trunc, _ = self._env.step(np.asarray([action]))
        # SAME_STEP autoreset: at an episode's end obs is already the next episode's first.
        return self._image(obs), float(rew[0]), bool(term[0]), bool(trunc[0]), {}

    @staticmethod
    def _image(obs: np.ndarray) -> np.ndarray:
        return np.moveaxis(obs[0], 0, -1).astype(np.float32) / 128.0 - 1.0

    def close(self):
        self._env.close()


def _trained_steps(result: dict) -> float | None:
    """Env steps RLlib's learner has trained on so far (None before its first update)."""
    value = result.get("learners", {}).get("__all_modules__", {}).get(
        "num_env_steps_trained_lifetime")
    return None if value is None else float(value)


def rllib_breakout_fps(cfg, seconds: float, gpu: bool) -> float:
    from ray.rllib.algorithms.impala import IMPALAConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    register_env("accord_breakout", RLlibBreakout)
    unroll = cfg.actors.unroll_length
    config = (
        IMPALAConfig()
        .environment("accord_breakout", env_config={"sticky_actions": cfg.env.sticky_actions})
        .env_runners(num_env_runners=cfg.actors.num_actors,
                     num_envs_per_env_runner=cfg.env.envs_per_actor,
                     rollout_fragment_length=unroll)
        .learners(num_learners=0, num_gpus_per_learner=1 if gpu else 0)
        .training(train_batch_size_per_learner=cfg.learner.batch_size * unroll,
                  lr=cfg.learner.lr, entropy_coeff=cfg.learner.entropy_coef, grad_clip=40.0)
        .reporting(min_time_s_per_iteration=min(RLLIB_IMPALA_ITERATION_SECONDS, seconds))
        .rl_module(model_config=DefaultModelConfig(conv_filters=NATURE_CNN,
                                                   conv_activation="relu",
                                                   head_fcnet_hiddens=[512]))
    )
    algo = config.build_algo()
    try:
        end = time.monotonic() + warmup_seconds(seconds)
        result = algo.train()
        while time.monotonic() < end or _trained_steps(result) is None:
            result = algo.train()
        before, start = _trained_steps(result), time.monotonic()
        while time.monotonic() - start < seconds:
            result = algo.train()
        elapsed = time.monotonic() - start
        return (_trained_steps(result) - before) * cfg.frames_per_step / elapsed
    finally:
        algo.stop()


# ---- CartPole: seconds to a mean return of 150 -----------------------------------------------

def accord_cartpole_seconds(config: Path, limit: float, overrides: list[str]) -> dict:
    """`accord train` in its own process; the first metrics row with return >= 150."""
    with tempfile.TemporaryDirectory() as root:
        cmd = [str(Path(sys.executable).parent / "accord"), "train", str(config),
               "--set", f"run.root={root}", "--set", f"run.stop_return={TARGET}",
               "--set", f"run.max_seconds={limit}", "--set", "run.total_frames=100000000",
               # no dashboard, as RLlib's Ray here: its start-up is not measured, only waited for
               "--set", "run.progress=false", "--set", "run.dashboard=false"]
        for item in overrides:
            cmd += ["--set", item]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              timeout=limit + 300)
        process_s = time.monotonic() - start
        if proc.returncode != 0:
            raise RuntimeError(f"accord train failed: {(proc.stdout + proc.stderr)[-1500:]}")
        (run_dir,) = Path(root).iterdir()
        metrics = run_dir / "metrics.csv"
        rows = list(csv.DictReader(open(metrics))) if metrics.exists() else []
    if not rows:  # the limit came before the first metrics row: nothing was reached
        return {"seconds": None, "frames": 0.0, "process_s": process_s}
    column = next(k for k in rows[0] if k.startswith("return/"))
    for row in rows:
        if row.get(column) and float(row[column]) >= TARGET:
            return {"seconds": float(row["wall_time"]), "frames": float(row["frames"]),
                    "process_s": process_s}
    return {"seconds": None, "frames": float(rows[-1]["frames"]), "process_s": process_s}


def rllib_cartpole_config(algo: str, num_runners: int, envs: int, unroll: int):
    """RLlib's tuned CartPole settings (its tuned_examples/{impala,ppo}/cartpole_*.py)."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    if algo == "impala":
        from ray.rllib.algorithms.impala import IMPALAConfig

        config = IMPALAConfig().training(train_batch_size_per_learner=500, grad_clip=40.0,
                                         grad_clip_by="global_norm", lr=0.0005,
                                         vf_loss_coeff=0.05, entropy_coeff=0.0)
        config = config.reporting(min_time_s_per_iteration=CARTPOLE_ITERATION_SECONDS)
        model = DefaultModelConfig(vf_share_layers=True)
    else:
        from ray.rllib.algorithms.ppo import PPOConfig

        config = PPOConfig().training(lr=0.0003, num_epochs=6, vf_loss_coeff=0.01)
        model = DefaultModelConfig(fcnet_hiddens=[32], fcnet_activation="linear",
                                   vf_share_layers=True)
    config = config.environment("CartPole-v1").env_runners(
        num_env_runners=num_runners, num_envs_per_env_runner=envs,
        **({"rollout_fragment_length": unroll} if algo == "impala" else {}))
    return config.rl_module(model_config=model).learners(num_learners=0)


def rllib_cartpole_seconds(algo: str, num_runners: int, envs: int, unroll: int,
                           limit: float) -> dict:
    algo_obj = rllib_cartpole_config(algo, num_runners, envs, unroll).build_algo()
    try:
        start = time.monotonic()
        while time.monotonic() - start < limit:
            result = algo_obj.train()
            ret = result.get("env_runners", {}).get("episode_return_mean")
            steps = float(result.get("env_runners", {}).get("num_env_steps_sampled_lifetime", 0))
            if ret is not None and ret >= TARGET:
                return {"seconds": time.monotonic() - start, "frames": steps}
        return {"seconds": None, "frames": steps}
    finally:
        algo_obj.stop()


# ---- report ----------------------------------------------------------------------------------

def _fmt(x, spec=",.0f"):
    return "-" if x is None else format(x, spec)


def main(breakout_cfg, cartpole_config: Path, seconds: float = 30.0,
         cartpole_limit: float = 300.0, cartpole_overrides: list[str] = (),
         skip_breakout: bool = False, skip_cartpole: bool = False) -> dict:
    from accord.config import load_config
    from bench.throughput import fleet_fps

    console = Console()
    out: dict = {}
    cart_cfg = load_config(cartpole_config, list(cartpole_overrides))
    n, m = breakout_cfg.actors.num_actors, breakout_cfg.env.envs_per_actor
    ray.init(include_dashboard=False, num_cpus=max(n, cart_cfg.actors.num_actors) + 1,
             configure_logging=False, log_to_driver=False)
    gpu = ray.cluster_resources().get("GPU", 0) >= 1 and breakout_cfg.learner.device != "cpu"
    try:
        if not skip_breakout:
            console.print(f"Breakout: accord IMPALA, {n} actors x {m} envs, learner consuming ...")
            accord = fleet_fps(breakout_cfg, seconds, use_learner=True)
            console.print(f"Breakout: RLlib IMPALA, {n} env runners x {m} envs ...")
            rllib = rllib_breakout_fps(breakout_cfg, seconds, gpu)
            out["breakout"] = {"accord_fps": accord["fps"], "rllib_fps": rllib,
                               "device": accord["device"]}
    finally:
        ray.shutdown()   # accord train starts its own Ray; RLlib's CartPole runs get a fresh one
    if not skip_cartpole:
        runners, envs = cart_cfg.actors.num_actors, cart_cfg.env.envs_per_actor
        console.print(f"CartPole to {TARGET:.0f}: accord IMPALA ({cartpole_config}) ...")
        out["cartpole"] = {"accord IMPALA": accord_cartpole_seconds(
            cartpole_config, cartpole_limit, list(cartpole_overrides))}
        for algo in ("impala", "ppo"):
            console.print(f"CartPole to {TARGET:.0f}: RLlib {algo.upper()}, {runners} env "
                          f"runners x {envs} envs ...")
            ray.init(include_dashboard=False, num_cpus=runners + 1, configure_logging=False,
                     log_to_driver=False)
            try:
                out["cartpole"][f"RLlib {algo.upper()}"] = rllib_cartpole_seconds(
                    algo, runners, envs, cart_cfg.actors.unroll_length, cartpole_limit)
            finally:
                ray.shutdown()

    if "breakout" in out:
        b = out["breakout"]
        table = Table(title=f"Breakout learner frames/s: {n} actors/env runners x {m} envs, "
                            f"unroll {breakout_cfg.actors.unroll_length}, batch "
                            f"{breakout_cfg.learner.batch_size}, learner on {b['device']}, "
                            f"{seconds:.0f} s after {warmup_seconds(seconds):.0f} s warm-up")
        for col in ("system", "frames/s", "accord / RLlib"):
            table.add_column(col, justify="left" if col == "system" else "right")
        table.add_row("accord IMPALA", _fmt(b["accord_fps"]),
                      f"{b['accord_fps'] / b['rllib_fps']:.2f}" if b["rllib_fps"] else "-")
        table.add_row("RLlib IMPALA", _fmt(b["rllib_fps"]), "")
        console.print(table)
    if "cartpole" in out:
        table = Table(title=f"CartPole-v1 to mean return {TARGET:.0f} (limit {cartpole_limit:.0f} s)")
        for col in ("system", "seconds", "env steps", "vs RLlib PPO"):
            table.add_column(col, justify="left" if col == "system" else "right")
        ppo = out["cartpole"].get("RLlib PPO", {}).get("seconds")
        for name, r in out["cartpole"].items():
            ratio = f"{r['seconds'] / ppo:.2f}" if r["seconds"] and ppo else "-"
            table.add_row(name, _fmt(r["seconds"], ".1f") if r["seconds"] else "not reached",
                          _fmt(r["frames"]), ratio)
        console.print(table)
    return out
