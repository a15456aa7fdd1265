"""Actor-fleet throughput against the raw environment, measured side by side in one run.

1. raw: one `AtariVectorEnv` with N threads stepping N x M envs with random actions: the most
   the N cores can give.
2. fleet: N rollout actors (one CPU each, M envs, CPU policy inference, unrolls through the
   object store and the queue service) with a consumer that drains the queue as fast as it
   can: the learner's own loop with an update that does nothing, publishing a new weights
   version on the learner's cadence, so the actors pay the weight fetches they pay against
   the learner and the drain row compares with the learner row. ratio = fleet / raw. Both
   rows report the weights the fleet fetched (MB/s) and the publishes per second. A third row times one env step and one policy forward on one core:
   an actor pays both on its CPU, so env / (env + policy) is the ceiling of that ratio.
   With `--set actors.inference=server` the actors only step their envs and the policy runs
   on the inference servers (a GPU share where there is one), which lifts that ceiling.
3. with `--learner`: the real learner instead of the drain (on CUDA when the cluster has a GPU):
   end-to-end frames/s, and the learner's samples/s divided by a bare forward+backward+step of
   the same network on the same batch size (in the learner's precision), timed on the same
   device in the same run.

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
from accord.driver import actor_name, local_resources, start_topology
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


class NoUpdate:
    """An `Algorithm` (learner/algorithm.py) whose update does nothing: the drain runs the
    learner's own loop around it, so its row pays everything the learner's row pays (fetch,
    collate, weight publishes on the learner's cadence) but the update."""

    def __init__(self, weights: dict[str, torch.Tensor], frames_per_step: int):
        self.weights, self.frames_per_step = weights, frames_per_step
        self.updates = self.frames = self.nonfinite_total = 0

    def step(self, batch: dict) -> None:
        self.updates += 1
        self.frames += batch["actions"].size * self.frames_per_step

    def read_metrics(self) -> dict:
        return {}

    def actor_tensors(self) -> dict[str, torch.Tensor]:
        return self.weights

    def actor_weights(self) -> dict:
        return {k: v.numpy() for k, v in self.weights.items()}


@ray.remote(num_cpus=0)
class Drain:
    """Takes every batch off the queue through the learner's loop with `NoUpdate`; each batch
    is a new weights version, published as the learner publishes (learner.publish_every and
    publish_seconds, from a thread), so the actors fetch weights as they do against the learner."""

    def __init__(self, cfg, spec, service_names: list[str], weights_name: str):
        from actors.policy import policy_network
        from learner.publish import BackgroundPublisher
        from learner.recovery import WeightPublisher
        from learner.registry import build_source
        from learner.remote import PUBLISH_CALL_SECONDS
        from learner.worker import LearnerWorker

        service = [ray.get_actor(n) for n in service_names]
        weights = {k: v.detach().clone() for k, v in policy_network(cfg, spec).state_dict().items()}
        publisher = BackgroundPublisher(WeightPublisher(
            ray.get_actor(weights_name), service, put=ray.put,
            fetch=lambda ref: ray.get(ref, timeout=PUBLISH_CALL_SECONDS)))
        self.worker = LearnerWorker(NoUpdate(weights, cfg.frames_per_step), build_source(cfg, service),
                                    cfg.learner.publish_every, publish_seconds=cfg.learner.publish_seconds,
                                    publisher=publisher,
                                    fetch=lambda request, timeout: ray.get(request, timeout=timeout))

    def train(self, max_updates: int, max_seconds: float) -> dict:
        return self.worker.train(max_updates, max_seconds)

    def counters(self) -> dict:
        return self.worker.counters()


CHUNK_SECONDS = 1.0          # the consumer's chunks: the driver hears from it at least this often
CHUNK_GRACE_SECONDS = 120.0  # past a chunk's seconds before the driver gives up on it (a first
                             # update may compile or capture; a late chunk is counted, not waited for)
STARTUP_SECONDS = 600.0      # for the fleet's first batch: actors start a few at a time on few cores


def _chunk(consumer, seconds: float) -> dict:
    try:
        return ray.get(consumer.train.remote(10**9, seconds), timeout=seconds + CHUNK_GRACE_SECONDS)
    except ray.exceptions.GetTimeoutError:
        raise SystemExit(f"the consumer's chunk of {seconds:.0f} s did not return within "
                         f"{CHUNK_GRACE_SECONDS:.0f} s more; see its actor's log") from None


def fleet_weight_fetches(actors) -> int:
    """Weight fetches of every rollout actor that answers within 30 s (0 with no actors)."""
    if not actors:
        return 0
    refs = [a.stats.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=30)
    return sum(s["weight_fetches"] for s in ray.get(ready))


def train_until_the_first_update(consumer) -> None:
    """Train `consumer` in chunks of CHUNK_SECONDS until its first update: the actors start
    after `start_topology` returns, a few at a time on few cores, so a warm-up or window begun
    at a fixed time could end before any batch had come (`bench mt10 --seconds 1` once read 0)."""
    start = time.monotonic()
    while _chunk(consumer, CHUNK_SECONDS)["counters"]["updates"] == 0:
        if time.monotonic() - start > STARTUP_SECONDS:
            raise SystemExit(f"no batch reached the consumer within {STARTUP_SECONDS:.0f} s: are "
                             f"there CPUs for every actor (actors.num_actors + 1)?")


def measure_consumer(consumer, actors, seconds: float) -> dict:
    """Frames/s through `consumer` (the learner or the drain) over `seconds` in chunks of
    CHUNK_SECONDS, after the fleet's first batch and a warm-up; and the weights the fleet
    fetched meanwhile, in bytes/s."""
    train_until_the_first_update(consumer)
    warm_end = time.monotonic() + warmup_seconds(seconds)
    while time.monotonic() < warm_end:
        _chunk(consumer, min(CHUNK_SECONDS, warm_end - time.monotonic()))
    before = ray.get(consumer.counters.remote(), timeout=CHUNK_GRACE_SECONDS)
    fetches_before = fleet_weight_fetches(actors)
    start = time.monotonic()
    while (left := seconds - (time.monotonic() - start)) > 0:
        _chunk(consumer, min(CHUNK_SECONDS, left))
    elapsed = time.monotonic() - start
    after = ray.get(consumer.counters.remote(), timeout=CHUNK_GRACE_SECONDS)
    fetches = fleet_weight_fetches(actors) - fetches_before
    return {"fps": (after["frames"] - before["frames"]) / elapsed,
            "publishes/s": (after["publishes"] - before["publishes"]) / elapsed,
            "weights_bytes/s": fetches * after["publish_bytes"] / elapsed,
            "late_chunks": after["late_chunks"] - before["late_chunks"]}


def wait_for_first_unroll(queue, timeout: float = 600.0) -> None:
    """Actors (and inference servers) start their processes after `start_topology` returns; on a
    busy machine that takes longer than the warm-up, which would then measure start-up."""
    deadline = time.monotonic() + timeout
    while ray.get(queue.stats.remote())["queue/inserted"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no actor produced an unroll within {timeout:.0f} s")
        time.sleep(0.2)


def fleet_fps(cfg, seconds: float, use_learner: bool) -> dict:
    run_id = f"bench-{time.time_ns()}"
    topo = start_topology(cfg, run_id)
    try:
        wait_for_first_unroll(topo.queue)
        if use_learner:
            consumer, device = topo.learner, ray.get(topo.learner.device_name.remote())
        else:
            names = [actor_name(run_id, "queue", s if cfg.queue.shards > 1 else None)
                     for s in range(cfg.queue.shards)]
            consumer, device = Drain.remote(cfg, topo.spec, names, actor_name(run_id, "weights")), "-"
        return {**measure_consumer(consumer, topo.actors, seconds), "device": device}
    finally:
        topo.stop()


@ray.remote
def bare_update_samples_per_s(cfg, obs_shape, num_actions: int, seconds: float) -> float:
    """Samples/s of forward + backward + RMSProp step of the learner's network, no V-trace, no
    data path; the forward in the learner's precision (`learner.bf16`), so the ratio compares
    like with like."""
    from models.actor_critic import build_model
    from learner.remote import resolve_device

    device = torch.device(resolve_device(cfg.learner.device))
    torch.set_num_threads(cfg.learner.num_threads)
    T, B = cfg.actors.unroll_length, -(-cfg.learner.batch_size // cfg.env.envs_per_actor) * cfg.env.envs_per_actor
    model = build_model(cfg.learner.model, obs_shape, num_actions).to(device)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    obs = torch.randint(0, 255, ((T + 1) * B, *obs_shape), dtype=torch.uint8, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.learner.bf16):
            logits, values = model(obs)
        (logits.float().logsumexp(-1).sum() + values.float().square().sum()).backward()
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
                 "value": fleet["fps"], "ratio": fleet["fps"] / raw},
                {"measure": "weights to the fleet, MB/s (publishes/s)", "value": None,
                 "text": f"{fleet['weights_bytes/s'] / 1e6:,.1f} ({fleet['publishes/s']:.1f})",
                 "ratio": None, "note": "fetches x bytes per publish"}]
        if fleet["late_chunks"]:
            console.print(f"[yellow]{fleet['late_chunks']} of the consumer's chunks ran late "
                          f"(learner/late_chunks): a wait was not bounded")
        if use_learner:
            from envs import describe

            spec = describe(cfg.env.kind, cfg.env.tasks[0], **env_options(cfg))
            gpu = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.learner.device != "cpu" else 0
            bare = ray.get(bare_update_samples_per_s.options(num_gpus=gpu, num_cpus=1).remote(
                cfg, spec.obs_shape, spec.num_actions, min(seconds, 15.0)),
                timeout=min(seconds, 15.0) + STARTUP_SECONDS)
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
