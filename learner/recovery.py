"""What the learner actor does with the world outside its algorithm, without Ray: publish a
version of the weights to the actors, and come back after Ray restarted its process.

`LearnerActor` (learner/remote.py) hands in `ray.put` and `ray.get` and its Ray handles; tests
hand in plain fakes.

Order of a publish: the weights go to the weight store before any shard hears of the version,
because an actor learns of a new version from a shard's insert reply and then asks the store
for it; the other order would send it to the store for a version the store does not hold yet.

After a restart the learner is back at the newest checkpoint that loads, behind the version the
actors act with, and publishing that older version is what makes them resync: the shards then
name another version than theirs in every insert reply (actors/remote.py, `weights_changed`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from learner.checkpoint import load_latest
from learner.worker import LearnerWorker


class WeightPublisher:
    """`publish_weights(version, weights)` for `LearnerWorker`: `weights` into the object store
    once (`put`), its reference to the weight store, then the version to every service shard;
    returns once all of them hold it (`fetch` waits for a call)."""

    def __init__(self, weight_store, shards: Sequence, put: Callable[[Any], Any],
                 fetch: Callable[[Any], Any]):
        self.weight_store, self.shards = weight_store, list(shards)
        self._put, self._fetch = put, fetch

    def __call__(self, version: int, weights: dict) -> None:
        ref = self._put(weights)  # once, however many actors read it
        self._fetch(self.weight_store.publish.remote(version, [ref]))
        self._fetch([shard.set_weights_version.remote(version) for shard in self.shards])


def recover(worker: LearnerWorker, run_dir: str) -> dict:
    """Continue from the newest checkpoint of `run_dir` that loads (none yet: from the start,
    as the process was built) and publish its weights; returns what the driver logs: the
    checkpoint, the corrupt ones set aside, and the counters it went back to."""
    restored = load_latest(run_dir, map_location="cpu")
    if restored.state is not None:
        worker.algorithm.load_state_dict(restored.state)
    worker.publish()
    return {"checkpoint": None if restored.path is None else str(restored.path),
            "corrupt_skipped": len(restored.corrupt), **worker.counters()}
