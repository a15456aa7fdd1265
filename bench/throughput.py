"""Actor-fleet throughput against the raw environment, measured side by side in one run.

1. raw: one `AtariVectorEnv` with N threads stepping N x M envs with random actions: the most
   the N cores can give.
2. fleet: N rollout actors (one CPU each, M envs, CPU policy inference, unrolls through the
   object store and the queue service) with a consumer that drains the queue as fast as it
   can and republishes weights, so the actors pay the weight-broadcast cost too.
   ratio = fleet / raw. A third row times one env step and one policy forward on one core:
   an actor pays both on its CPU, so env / (env + policy) is the ceiling of that ratio.
   With `--set actors.inference=server` the actors only step their envs and the policy runs
   on the inference servers (a GPU share where there is one), which lifts that ceiling.
3. with `--learner`: the real learner instead of the drain (on CUDA when the cluster has a GPU):
   end-to-end frames/s, and the learner's samples/s divided by a bare forward+backward+step of
   the same network on the same batch size, timed on the same device in the same run.

    accord bench throughput [--seconds 30] [--learner] [--set actors.num_actors=14]
"""
from __future__ import annotations

import time

import numpy as np
import ray
import torch
from rich.console import Console
from rich.table import Table

from accord.config import check_resources, inference_device
from accord.driver import local_resources, start_topology
from actors.rollout import env_options

WARMUP_SECONDS = 5.0  # or the measured seconds where fewer: a short smoke run warms up briefly


def warmup_seconds(seconds: float) -> float:
    return min(WARMUP_SECONDS, seconds)


def raw_env_fps(cfg, seconds: float) -> float:
    """Frames/s of the bare AtariVectorEnv, N threads, N*M envs, random actions."""
    from ale_py.vector_env import AtariVectorEnv

    n = cfg.actors.num_actors
    env = AtariVectorEnv(cfg.env.tasks[0], num_envs=n * cfg.env.envs_per_actor, num_threads=n,
                         repeat_action_probability=cfg.env.sticky_actions, autoreset_mode="SameStep",
                         full_action_space=cfg.env.full_action_space)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = lambda: rng.integers(0, env.single_action_space.n, env.num_envs)  # noqa: E731
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        env.step(actions())
    steps, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        env.step(actions())
        steps += env.num_envs
    elapsed = time.monotonic() - start
    env.close()
    return steps * cfg.frames_per_step / elapsed


def actor_step_costs(cfg, repeats: int = 50) -> tuple[float, float]:
    """Seconds per batch of M envs on one core: (env step, policy forward). A rollout actor
    pays both on its one CPU, so env / (env + policy) bounds the fleet/raw ratio."""
    from actors.rollout import RolloutWorker
    from envs import describe

    torch.set_num_threads(1)
    spec = describe(cfg.env.kind, cfg.env.tasks[0], **env_options(cfg))
    worker = RolloutWorker(cfg, 0, spec)
    rng = np.random.default_rng(0)  # random actions, as the raw side steps with
    obs, task = torch.from_numpy(worker.obs), torch.zeros(worker.env.num_envs, dtype=torch.int64)
    with torch.inference_mode():
        worker.model(obs, task)
        start = time.perf_counter()
        for _ in range(repeats):
            worker.model(obs, task)
        policy = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        worker.env.step(rng.integers(0, spec.num_actions, worker.env.num_envs))
    env = (time.perf_counter() - start) / repeats
    worker.close()
    return env, policy


@ray.remote(num_cpus=0)
class Drain:
    """Takes every batch off the queue, fetches its arrays, drops them; republishes weights."""

    def __init__(self, queue, weight_store, weights_ref: list, unrolls_per_batch: int):
        self.queue, self.weight_store = queue, weight_store
        self.weights_ref, self.n = weights_ref, unrolls_per_batch
        self.version = 0  # kept across runs: actors only fetch versions newer than theirs

    def run(self, seconds: float, frames_per_step: int) -> int:
        frames, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            refs = ray.get(self.queue.sample.remote(self.n, 0.5))
            if refs is None:
                continue
            for unroll in ray.get(refs):
                frames += unroll["actions"].size * frames_per_step
            self.version += 1
            ray.get(self.weight_store.publish.remote(self.version, self.weights_ref))
        return frames


def wait_for_first_unroll(queue, timeout: float = 600.0) -> None:
    """Actors (and inference servers) start their processes after `start_topology` returns; on a
    busy machine that takes longer than the warm-up, which would then measure start-up."""
    deadline = time.monotonic() + timeout
    while ray.get(queue.stats.remote())["queue/inserted"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no actor produced an unroll within {timeout:.0f} s")
        time.sleep(0.2)


def fleet_fps(cfg, seconds: float, use_learner: bool) -> dict:
    topo = start_topology(cfg, f"bench-{time.time_ns()}")
    try:
        wait_for_first_unroll(topo.queue)
        if use_learner:
            ray.get(topo.learner.train.remote(10**9, warmup_seconds(seconds)))
            before = ray.get(topo.learner.counters.remote())["frames"]
            start = time.monotonic()
            ray.get(topo.learner.train.remote(10**9, seconds))
            elapsed = time.monotonic() - start
            counters = ray.get(topo.learner.counters.remote())
            return {"fps": (counters["frames"] - before) / elapsed,
                    "device": ray.get(topo.learner.device_name.remote())}
        weights = ray.get(topo.learner.__ray_call__.remote(lambda self: ray.put(self.learner.actor_weights())))
        drain = Drain.remote(topo.queue, topo.weight_store, [weights],
                             -(-cfg.learner.batch_size // cfg.env.envs_per_actor))
        ray.get(drain.run.remote(warmup_seconds(seconds), cfg.frames_per_step))
        start = time.monotonic()
        frames = ray.get(drain.run.remote(seconds, cfg.frames_per_step))
        return {"fps": frames / (time.monotonic() - start), "device": "-"}
    finally:
        topo.stop()


@ray.remote
def bare_update_samples_per_s(cfg, obs_shape, num_actions: int, seconds: float) -> float:
    """Samples/s of forward + backward + RMSProp step of the learner's network, no V-trace, no data path."""
    from models.actor_critic import build_model
    from learner.remote import resolve_device

    device = torch.device(resolve_device(cfg.learner.device))
    torch.set_num_threads(cfg.learner.num_threads)
    T, B = cfg.actors.unroll_length, -(-cfg.learner.batch_size // cfg.env.envs_per_actor) * cfg.env.envs_per_actor
    model = build_model(cfg.learner.model, obs_shape, num_actions).to(device)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    obs = torch.randint(0, 255, ((T + 1) * B, *obs_shape), dtype=torch.uint8, device=device)

    def step():
        logits, values = model(obs)
        (logits.logsumexp(-1).sum() + values.square().sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    n, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        step()
        n += 1
    sync()
    return n * T * B / (time.monotonic() - start)


def main(cfg, seconds: float = 30.0, use_learner: bool = False) -> list[dict]:
    if cfg.env.kind != "atari":
        raise SystemExit("accord bench throughput compares against AtariVectorEnv: use an atari config")
    started = not ray.is_initialized()
    if started:  # before the raw side runs: a server with no GPU to run on fails now
        check_resources(cfg, local_resources(), where="this machine")
    console = Console()
    n, m = cfg.actors.num_actors, cfg.env.envs_per_actor
    console.print(f"raw AtariVectorEnv: {n} threads x {m} envs each on {cfg.env.tasks[0]} ...")
    raw = raw_env_fps(cfg, seconds)
    servers = cfg.actors.inference_servers if cfg.actors.inference == "server" else 0
    if started:  # a CPU each for the actors, the learner and the inference servers
        ray.init(include_dashboard=False, num_cpus=n + 1 + servers, configure_logging=False,
                 log_to_driver=False)
    inference = (f"inference on {servers} {inference_device(cfg, ray.cluster_resources())} server(s)"
                 if servers else "local inference")
    try:
        console.print(f"accord fleet: {n} actors x {m} envs, {inference}, "
                      f"{'learner' if use_learner else 'drain'} consuming ...")
        fleet = fleet_fps(cfg, seconds, use_learner)
        env_s, policy_s = actor_step_costs(cfg)
        rows = [{"measure": "raw AtariVectorEnv frames/s", "value": raw, "ratio": None},
                {"measure": f"one core, ms per {m}-env step: env / policy forward",
                 "value": None, "text": f"{env_s * 1e3:.2f} / {policy_s * 1e3:.2f}",
                 "ratio": env_s / (env_s + policy_s), "note": "ceiling env/(env+policy)"},
                {"measure": f"fleet frames/s ({'learner on ' + fleet['device'] if use_learner else 'drain'}, "
                            f"{inference})",
                 "value": fleet["fps"], "ratio": fleet["fps"] / raw}]
        if use_learner:
            from envs import describe

            spec = describe(cfg.env.kind, cfg.env.tasks[0], **env_options(cfg))
            gpu = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.learner.device != "cpu" else 0
            bare = ray.get(bare_update_samples_per_s.options(num_gpus=gpu, num_cpus=1).remote(
                cfg, spec.obs_shape, spec.num_actions, min(seconds, 15.0)))
            learner_sps = fleet["fps"] / cfg.frames_per_step
            rows += [{"measure": "bare fwd+bwd+step samples/s", "value": bare, "ratio": None},
                     {"measure": "learner samples/s (end to end)", "value": learner_sps,
                      "ratio": learner_sps / bare}]
    finally:
        if started:
            ray.shutdown()
    table = Table(title=f"throughput: {n} actors x {m} envs, unroll {cfg.actors.unroll_length}, "
                        f"batch {cfg.learner.batch_size}, {seconds:.0f} s per side")
    for col in ("measure", "value", "ratio"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for row in rows:
        value = row.get("text") or f"{row['value']:,.0f}"
        table.add_row(row["measure"], value, "" if row["ratio"] is None else f"{row['ratio']:.2f}")
    console.print(table)
    return rows
