"""The queue's wake-up rule under many blocked producers, side by side in one run.

P producers (asyncio tasks, no Ray, no envs: what 200 rollout actors look like to the queue
actor's event loop) insert as fast as the queue admits them into one `QueueService` of the
given capacity; one consumer samples n items at a time as the learner does. With the queue
full, every sample frees n slots. `wake="all"` (the rule before) wakes every blocked producer
on every change, and each checks the queue again; `wake="one"` wakes one producer per freed
slot. Reported per rule: samples/s and predicate checks (wake-ups) per sample.

    accord bench service --wakeups [--producers 200]
"""
from __future__ import annotations

import asyncio
import time

from replay.service import QueueService
from replay.tables import FifoTable


async def _run(wake: str, producers: int, capacity: int, n: int, seconds: float) -> dict:
    service = QueueService(FifoTable(capacity), wake=wake)

    async def produce(i: int) -> None:
        while True:
            await service.insert([i], 0)

    tasks = [asyncio.create_task(produce(i)) for i in range(producers)]
    await asyncio.sleep(0)
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        await service.sample(n)
        samples += 1
        await asyncio.sleep(0)   # each sample is its own call: the loop serves others between
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"rule": wake, "samples_per_s": samples / elapsed,
            "wakeups_per_sample": service.wakeups / max(samples, 1), "samples": samples}


def measure(producers: int = 200, capacity: int = 64, n: int = 2, seconds: float = 3.0) -> list[dict]:
    """One row per rule, the old one first; each run in its own event loop."""
    return [asyncio.run(_run(wake, producers, capacity, n, seconds)) for wake in ("all", "one")]


def main(producers: int = 200, capacity: int = 64, n: int = 2, seconds: float = 3.0) -> list[dict]:
    rows = measure(producers, capacity, n, seconds)
    print(f"queue wake-ups: {producers} producers blocked on a queue of {capacity}, "
          f"samples of {n}, {seconds:g} s per rule")
    print(f"{'rule':34} {'samples/s':>10} {'wake-ups/sample':>16}")
    labels = {"all": "wake every waiter (before)", "one": "one inserter per freed slot"}
    for row in rows:
        print(f"{labels[row['rule']]:34} {row['samples_per_s']:10.0f} {row['wakeups_per_sample']:16.1f}")
    old, new = rows
    print(f"{'one / all':34} {new['samples_per_s'] / old['samples_per_s']:9.2f}x "
          f"{new['wakeups_per_sample'] / max(old['wakeups_per_sample'], 1e-9):15.3f}x")
    return rows
