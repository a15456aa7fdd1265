"""`accord bench service --learner`: the real learner fed by synthetic producers, against a bare
forward+backward+step of the same network on the same batch, side by side in one run.

N synthetic producers (Ray actors with no env, bench/service.py) insert copies of a real
Breakout unroll (16 envs x 21 steps, compact frames) into the queue as fast as it takes them;
the real learner actor (on its device: CUDA when there is one, `--device` to choose) trains on
them exactly as in a run, publishing its weights on its cadence. No env steps compete with it,
so its samples/s over the bare update's samples/s is what the learner's data path (fetch,
collate, host-to-device copy, V-trace, metrics, publishes) costs on top of the arithmetic.

    accord bench service --learner [--producers 4] [--seconds 15] [--device auto]
"""
from __future__ import annotations

import time

import ray
from rich.console import Console
from rich.table import Table

from accord.config import load_config
from accord.driver import actor_name
from bench.service import ENVS, T, SyntheticProducer, breakout_unrolls
from bench.throughput import STARTUP_SECONDS, bare_update_samples_per_s, measure_consumer
from envs import describe
from learner.broadcast import WeightStore
from learner.remote import LearnerActor, resolve_device
from replay.service import QueueActor


def learner_config(device: str):
    """configs/bench.yaml (Breakout, batch 32, unroll 20, 16 envs per unroll) on `device`."""
    return load_config("configs/bench.yaml", [f"learner.device={device}",
                                              f"env.envs_per_actor={ENVS}", f"actors.unroll_length={T}"])


def main(producers: int, seconds: float, device: str = "auto") -> dict:
    console = Console()
    cfg = learner_config(device)
    unroll = {**breakout_unrolls(compact_frames=True), "version": 0}
    spec = describe(cfg.env.kind, cfg.env.tasks[0])
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        gpu = 1 if resolve_device(cfg.learner.device) == "cuda" else 0
        run = f"bench-learner-{time.time_ns()}"
        queue_name, weights_name = actor_name(run, "queue"), actor_name(run, "weights")
        queue = QueueActor.options(name=queue_name).remote("fifo", cfg.queue.capacity)
        store = WeightStore.options(name=weights_name).remote()
        learner = LearnerActor.options(num_gpus=gpu, num_cpus=1, max_restarts=0).remote(
            cfg, spec, [queue_name], weights_name, None)
        ray.get(learner.publish.remote(), timeout=STARTUP_SECONDS)
        fleet = [SyntheticProducer.remote(queue_name, unroll, 1) for _ in range(producers)]
        ray.get([p.ready.remote() for p in fleet], timeout=STARTUP_SECONDS)
        for p in fleet:  # they insert until killed below
            p.run.remote(STARTUP_SECONDS + 2 * seconds)
        console.print(f"learner on {ray.get(learner.device_name.remote())}, {producers} synthetic "
                      f"producers, batch {cfg.learner.batch_size} x unroll {T} ...")
        measured = measure_consumer(learner, [], seconds)
        for handle in (*fleet, learner, queue, store):
            ray.kill(handle)
        bare = ray.get(bare_update_samples_per_s.options(num_gpus=gpu, num_cpus=1).remote(
            cfg, spec.obs_shape, spec.num_actions, min(seconds, 15.0)),
            timeout=min(seconds, 15.0) + STARTUP_SECONDS)
    finally:
        ray.shutdown()
    learner_sps = measured["fps"] / cfg.frames_per_step
    table = Table(title=f"learner against synthetic producers, {seconds:.0f} s")
    for column in ("measure", "samples/s", "ratio"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row("bare fwd+bwd+step", f"{bare:,.0f}", "")
    table.add_row("learner, end to end", f"{learner_sps:,.0f}", f"{learner_sps / bare:.2f}")
    console.print(table)
    return {"learner": learner_sps, "bare": bare, "late_chunks": measured["late_chunks"]}
