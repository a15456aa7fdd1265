"""MT10 end to end against the raw Meta-World environments, measured side by side in one run.

1. raw: N processes (one CPU each, as many as rollout actors) step the raw Meta-World v3 envs
   of their share of the ten tasks with random actions: what N cores give with no learning.
2. accord: N rollout actors (SAC policy on CPU, transitions into the sharded replay) with the
   real SAC learner sampling task-balanced batches and updating, no rate limit, so env steps/s
   is as fast as the system runs; also the learner's updates/s and wait fraction.
   ratio = accord env steps/s / raw env steps/s on the same N actor cores (the learner and the
   replay have their own CPUs in a cluster; on a small machine they share these).

    accord bench mt10 [--seconds 30] [--set actors.num_actors=14] [--set learner.combiner.name=pcgrad]
"""
from __future__ import annotations

import time

import numpy as np
import ray
from rich.console import Console
from rich.table import Table

from accord.driver import start_topology
from actors.rollout import actor_task_ids
from bench.throughput import train_until_the_first_update

WARMUP_SECONDS = 10.0  # or the measured seconds where fewer: a short smoke run warms up briefly


def warmup_seconds(seconds: float) -> float:
    return min(WARMUP_SECONDS, seconds)


@ray.remote(num_cpus=1)
def raw_metaworld_steps(task_names: list[str], envs_per_task: int, seconds: float, seed: int) -> int:
    """Env steps in `seconds` of raw Meta-World envs with uniform random actions, one process."""
    import metaworld

    envs = []
    for name in task_names:
        tasks = metaworld.MT1(name, seed=seed).train_tasks
        for _ in range(envs_per_task):
            env = metaworld.env_dict.ALL_V3_ENVIRONMENTS[name]()
            env.set_task(tasks[0])
            env.reset()
            envs.append(env)
    rng = np.random.default_rng(seed)
    steps, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for env in envs:
            _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 4))
            if terminated or truncated:
                env.reset()
        steps += len(envs)
    return steps


def raw_fps(cfg, seconds: float) -> float:
    n, k = cfg.actors.num_actors, len(cfg.env.tasks)
    refs = [raw_metaworld_steps.remote([cfg.env.tasks[t] for t in actor_task_ids(k, n, i)],
                                       cfg.env.envs_per_actor, seconds, i) for i in range(n)]
    return sum(ray.get(refs)) / seconds


def accord_fps(cfg, seconds: float) -> dict:
    topo = start_topology(cfg, f"bench-mt10-{time.time_ns()}")
    try:
        train_until_the_first_update(topo.learner)
        ray.get(topo.learner.train.remote(10**9, warmup_seconds(seconds)))
        before = ray.get(topo.learner.counters.remote())
        start = time.monotonic()
        chunk = ray.get(topo.learner.train.remote(10**9, seconds))
        elapsed = time.monotonic() - start
        after = chunk["counters"]
        return {"fps": (after["frames"] - before["frames"]) / elapsed,
                "ups": (after["updates"] - before["updates"]) / elapsed,
                "wait": chunk["metrics"].get("learner/wait_fraction", float("nan"))}
    finally:
        topo.stop()


def main(cfg, seconds: float) -> list[dict]:
    console = Console()
    n = cfg.actors.num_actors
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, num_cpus=n + 1, configure_logging=False, log_to_driver=False)
    try:
        console.print(f"raw Meta-World: {n} processes over {len(cfg.env.tasks)} tasks ...")
        raw = raw_fps(cfg, seconds)
        console.print(f"accord: {n} actors, replay, SAC learner ({cfg.learner.combiner.name}) ...")
        ours = accord_fps(cfg, seconds)
    finally:
        if started:
            ray.shutdown()
    rows = [{"measure": "raw Meta-World env steps/s", "value": raw, "ratio": None},
            {"measure": "accord env steps/s (actors -> replay -> learner)", "value": ours["fps"],
             "ratio": ours["fps"] / raw},
            {"measure": f"learner updates/s (wait fraction {ours['wait']:.2f})", "value": ours["ups"],
             "ratio": None}]
    table = Table(title=f"MT10: {n} actors x {cfg.env.envs_per_actor} envs per task, "
                        f"{seconds:.0f} s per side")
    for col in ("measure", "value", "ratio"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for row in rows:
        table.add_row(row["measure"], f"{row['value']:,.1f}",
                      "" if row["ratio"] is None else f"{row['ratio']:.2f}")
    console.print(table)
    return rows
