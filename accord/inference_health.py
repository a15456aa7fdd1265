"""The driver's view of the inference servers (`actors.inference: server`): their restarts,
the ones that did not answer, the weight fetches and how full their batches run.

A restart is counted per new process that says it is one (`restarted`, from Ray), by its
incarnation id, so a restart that happens before the driver's first poll counts as well.
Polls come at metric rows; a process that Ray restarts and that dies again before the next
poll is not seen.
"""
from __future__ import annotations

import ray


class ServerHealth:
    def __init__(self, servers):
        self.servers = list(servers)
        self.unreachable = 0
        self._restarted: set[str] = set()  # incarnations that are restarts
        self._latest: dict[int, dict] = {}  # server -> its last stats

    def poll(self, timeout: float = 2.0) -> None:
        if not self.servers:
            return
        refs = {s.stats.remote(): i for i, s in enumerate(self.servers)}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        self.unreachable = len(refs) - len(ready)
        for ref in ready:
            try:
                stats = ray.get(ref)
            except ray.exceptions.RayActorError:  # dead for good: restarts used up
                self.unreachable += 1
                continue
            if stats["restarted"]:
                self._restarted.add(stats["incarnation"])
            self._latest[refs[ref]] = stats

    @property
    def restarts(self) -> int:
        return len(self._restarted)

    def metrics(self) -> dict[str, float]:
        """Nothing without servers, so that rows of local inference stay as they were."""
        if not self.servers:
            return {}
        latest = list(self._latest.values())
        batches = sum(s["batches"] for s in latest)
        return {"inference/restarts": float(self.restarts),
                "inference/unreachable": float(self.unreachable),
                "inference/weight_fetches": float(sum(s["weight_fetches"] for s in latest)),
                # since each server's (re)start: how many rollout actors' steps one forward holds
                "inference/steps_per_batch": sum(s["requests"] for s in latest) / max(batches, 1)}
