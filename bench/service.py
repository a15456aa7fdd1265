"""The queue service under many producers: what one shard and S shards sustain.

N light synthetic producers (Ray actors with no env) insert copies of a real Breakout unroll,
as the rollout actors send it, into the queue shards (producer i into shard i mod S), and a
consumer drains them as the learner does (UnrollSource: sample references from each shard in
turn, fetch from the object store, collate). Reported for 1 shard and for S shards, side by
side in one run: sustained unroll inserts/s and MB/s into the service, unrolls/s the consumer
drained, and the consumer's wait fraction (time blocked on the service / wall time). Also the
bytes per agent step of that unroll with full 4-frame stacks and compact (each frame once).

    accord bench service [--producers 8] [--shards 4] [--seconds 15] [--unrolls-per-insert 1]
"""
from __future__ import annotations

import time

import numpy as np
import ray
from rich.console import Console
from rich.table import Table

from accord.config import config_from_dict
from actors.rollout import RolloutWorker
from envs import describe
from envs.frame_stack import COMPACT_KEYS
from learner.impala.source import UnrollSource
from replay.service import QueueActor

ENVS, T = 16, 20  # an unroll of 16 envs x 21 steps, as in the 200-actor estimate


def breakout_unrolls(compact_frames: bool) -> dict:
    cfg = config_from_dict({
        "env": {"kind": "atari", "tasks": ["breakout"], "envs_per_actor": ENVS},
        "actors": {"num_actors": 1, "unroll_length": T, "compact_frames": compact_frames},
        "learner": {"batch_size": ENVS},
    })
    worker = RolloutWorker(cfg, 0, describe("atari", "breakout"))
    try:
        worker.unroll()  # past the first stack of the reset
        return worker.unroll()
    finally:
        worker.close()


def nbytes(unroll: dict) -> int:
    return sum(v.nbytes for v in unroll.values() if isinstance(v, np.ndarray))


@ray.remote(num_cpus=0)
class SyntheticProducer:
    """Inserts `unroll` as fast as the service takes it, one insert call in flight."""

    def __init__(self, queue_name: str, unroll: dict, unrolls_per_insert: int):
        self.queue = ray.get_actor(queue_name)
        self.unroll = unroll
        self.per_insert = unrolls_per_insert

    def ready(self) -> bool:
        return True

    def run(self, seconds: float) -> dict:
        """Acknowledged insert calls and unrolls within `seconds` (one left in flight at the
        end is not counted: the consumer has stopped draining by then)."""
        calls = unrolls = 0
        pending = None
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            refs = [ray.put(self.unroll) for _ in range(self.per_insert)]
            if pending is not None:
                ready, _ = ray.wait([pending], timeout=max(end - time.monotonic(), 0.0))
                if not ready:
                    break
                calls, unrolls = calls + 1, unrolls + self.per_insert
            pending = self.queue.insert.remote(refs, 0)
        return {"calls": calls, "unrolls": unrolls}


@ray.remote(num_cpus=1)
def drain(shards: list, unrolls_per_batch: int, seconds: float) -> dict:
    """The learner's side: sample, fetch, collate, as fast as the service hands out."""
    source = UnrollSource(shards, unrolls_per_batch, timeout=1.0)
    unrolls, waited = 0, 0.0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        t0 = time.monotonic()
        refs = ray.get(source.request())
        waited += time.monotonic() - t0
        batch = source.receive(refs)
        if batch is not None:
            unrolls += len(batch["versions"])
    return {"unrolls": unrolls, "wait_fraction": waited / (time.monotonic() - start)}


def measure(unroll: dict, producers: int, shards: int, seconds: float, per_insert: int,
            capacity_per_shard: int = 32, unrolls_per_batch: int = 4) -> dict:
    run = f"bench-{shards}-{time.monotonic_ns()}"
    names = [f"accord-queue-{run}-{s}" for s in range(shards)]
    queues = [QueueActor.options(name=n).remote("fifo", capacity_per_shard) for n in names]
    fleet = [SyntheticProducer.remote(names[i % shards], unroll, per_insert) for i in range(producers)]
    # every producer and shard up before the clock starts: worker start-up is not throughput
    ray.get([q.stats.remote() for q in queues] + [p.ready.remote() for p in fleet])
    consumer = drain.remote(queues, unrolls_per_batch, seconds)
    produced = ray.get([p.run.remote(seconds) for p in fleet])
    drained = ray.get(consumer)
    for handle in (*fleet, *queues):
        ray.kill(handle)
    unrolls = sum(p["unrolls"] for p in produced)
    return {"inserts/s": unrolls / seconds, "calls/s": sum(p["calls"] for p in produced) / seconds,
            "MB/s": unrolls * nbytes(unroll) / seconds / 1e6, "drained/s": drained["unrolls"] / seconds,
            "wait": drained["wait_fraction"]}


def main(producers: int, shards: int, seconds: float, unrolls_per_insert: int) -> None:
    console = Console()
    full, compact = breakout_unrolls(False), breakout_unrolls(True)
    steps = T * ENVS
    console.print(f"Breakout unroll ({ENVS} envs x {T + 1} steps): full stacks "
                  f"{nbytes(full) / 1e6:.2f} MB = {nbytes(full) / steps:,.0f} B per agent step; compact "
                  f"{nbytes(compact) / 1e6:.2f} MB = {nbytes(compact) / steps:,.0f} B per agent step; "
                  f"{nbytes(full) / nbytes(compact):.2f}x smaller "
                  f"({', '.join(k for k in COMPACT_KEYS)} instead of obs)")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        table = Table(title=f"queue service, {producers} producers, {seconds:.0f} s each, "
                            f"{unrolls_per_insert} unroll(s) per insert, compact unrolls")
        for column in ("shards", "inserts/s", "insert calls/s", "MB/s", "drained/s", "learner wait"):
            table.add_column(column, justify="right")
        for s in sorted({1, shards}):
            r = measure(compact, producers, s, seconds, unrolls_per_insert)
            table.add_row(str(s), f"{r['inserts/s']:,.0f}", f"{r['calls/s']:,.0f}", f"{r['MB/s']:,.0f}",
                          f"{r['drained/s']:,.0f}", f"{r['wait']:.0%}")
        console.print(table)
        console.print(f"{ray.available_resources().get('CPU', 0):.0f} of "
                      f"{ray.cluster_resources().get('CPU', 0):.0f} CPUs free after the run")
    finally:
        ray.shutdown()
