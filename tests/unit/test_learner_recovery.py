"""The learner actor's publish and restart paths without Ray (learner/recovery.py): the weights
reach the weight store before any shard names their version, and a restarted learner goes back
to the newest checkpoint that loads and publishes that version, so the actors resync."""
from __future__ import annotations

import numpy as np
import torch

from learner.checkpoint import save_checkpoint
from learner.recovery import WeightPublisher, recover
from learner.worker import LearnerWorker


class Calls:
    """Fake actor handles: `handle.method.remote(*args)` records the call and returns it as
    the reference; `fetch` resolves references in the order they are waited for."""

    def __init__(self):
        self.log = []

    def handle(self, name):
        calls = self

        class Method:
            def __init__(self, method):
                self.method = method

            def remote(self, *args):
                return (name, self.method, args)

        class Handle:
            def __getattr__(self, method):
                return Method(method)
        return Handle()

    def fetch(self, ref):
        self.log.extend(ref if isinstance(ref, list) else [ref])
        return ref


def test_a_publish_puts_the_weights_once_then_tells_the_store_then_every_shard():
    calls, puts = Calls(), []

    def put(weights):
        puts.append(weights)
        return f"ref{len(puts)}"

    publisher = WeightPublisher(calls.handle("store"), [calls.handle("shard0"), calls.handle("shard1")],
                                put=put, fetch=calls.fetch)
    publisher(7, {"w": 1})
    assert puts == [{"w": 1}]
    assert calls.log == [("store", "publish", (7, ["ref1"])),
                         ("shard0", "set_weights_version", (7,)), ("shard1", "set_weights_version", (7,))]


class Algorithm:
    """The part of the `Algorithm` protocol that recovery touches: state and weights."""

    def __init__(self, updates=0):
        self.updates, self.frames, self.nonfinite_total = updates, 10 * updates, 0

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates, self.frames = int(state["updates"]), 10 * int(state["updates"])
        self.loaded = state

    def actor_weights(self):
        return {"w": np.array([self.updates])}


class Source:
    lost = 0


def _worker(algorithm, published):
    return LearnerWorker(algorithm, Source(), publish_every=1,
                         publish_weights=lambda version, weights: published.append((version, weights["w"][0])))


def test_a_restart_goes_back_to_the_newest_checkpoint_that_loads_and_publishes_its_version(tmp_path):
    # With a tensor, so that where the checkpoint is loaded to matters.
    save_checkpoint(tmp_path, {"updates": 4, "w": torch.zeros(2)}, 4)
    save_checkpoint(tmp_path, {"updates": 8, "w": torch.ones(2)}, 8)
    newest = tmp_path / "checkpoints" / "ckpt_000000012.pt"
    newest.write_bytes(b"cut short by the kill")
    published = []
    worker = _worker(Algorithm(), published)
    recovered = recover(worker, str(tmp_path))
    assert published == [(8, 8)]  # the restored weights, versioned by their update count
    assert recovered == {"checkpoint": str(tmp_path / "checkpoints" / "ckpt_000000008.pt"),
                         "corrupt_skipped": 1, **worker.counters()}
    assert recovered["updates"] == 8 and recovered["frames"] == 80 and recovered["version"] == 8
    assert worker.algorithm.loaded["w"].device.type == "cpu" and worker.algorithm.loaded["w"].tolist() == [1, 1]


def test_a_restart_before_any_checkpoint_publishes_the_initial_weights(tmp_path):
    published = []
    worker = _worker(Algorithm(), published)
    recovered = recover(worker, str(tmp_path))
    assert published == [(0, 0)]
    assert recovered["checkpoint"] is None and recovered["corrupt_skipped"] == 0
    assert recovered["updates"] == 0 and recovered["version"] == 0
