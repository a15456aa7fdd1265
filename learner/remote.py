"""The learner actor: a thin Ray wrapper around `LearnerWorker` (learner/worker.py), which pulls
batches from the queue/replay service through its algorithm's `BatchSource`, steps the
`Algorithm` and publishes the actors' weights on a cadence, from a thread of its own
(learner/publish.py). This actor adds what needs Ray
(resolving requests, the object store, the weight store) and the checkpoints. It knows no
algorithm (see learner/algorithm.py). The driver calls `train` in short chunks so it can log,
checkpoint and stop between them.

Recovery: the driver creates this actor with `learner.max_restarts`. When its process dies,
Ray runs `__init__` again in a new one, which continues from the newest checkpoint of the run
directory that loads (the updates since are lost, at most one checkpoint interval) and
publishes those weights, so the actors resync to them (learner/recovery.py, without Ray); the
replay or queue service lives in its own actors and keeps its data.
"""
from __future__ import annotations

import numpy as np
import ray
import torch

from ray_support.actor_restart import restarted_by_ray
from learner.registry import build_algorithm, build_source
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.publish import BackgroundPublisher
from learner.recovery import WeightPublisher, recover
from learner.worker import LearnerWorker

PUBLISH_CALL_SECONDS = 30.0  # a weight-store or shard call slower than this is counted, not waited for


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("learner.device: 'cuda' requested but this learner sees no GPU")
    return requested


@ray.remote
class LearnerActor:
    def __init__(self, cfg, spec, service_names: list[str], weights_name: str, run_dir: str | None = None):
        # Named, not handed in: Ray cannot restart an actor whose constructor took actor
        # handles (they are object-store references), and it warns of it at creation.
        service = [ray.get_actor(name) for name in service_names]
        weight_store = ray.get_actor(weights_name)
        torch.set_num_threads(cfg.learner.num_threads)
        # Adam's moments of weights whose gradient stays 0 (a dead ReLU unit) decay through the
        # denormal floats, where a CPU's arithmetic is many times slower: on Pendulum's SAC the
        # critic's fused Adam step took 426 us with them and 176 us flushed to zero. Values below
        # 1.2e-38 change no update that matters. (It sets this process's CPU state only.)
        torch.set_flush_denormal(True)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        self.cfg = cfg
        self.weight_store = weight_store
        self.service = list(service)
        self.device = resolve_device(cfg.learner.device)
        self.learner = build_algorithm(cfg, spec, self.device)
        self.source = build_source(cfg, service)
        # The copy to the host and the calls of a publish run in the publisher's thread, off
        # the updates' path; each call is bounded, so a hung store delays publishes, not updates.
        publisher = BackgroundPublisher(WeightPublisher(
            weight_store, self.service, put=ray.put,
            fetch=lambda ref: ray.get(ref, timeout=PUBLISH_CALL_SECONDS)))
        self.worker = LearnerWorker(self.learner, self.source, cfg.learner.publish_every,
                                    publish_seconds=cfg.learner.publish_seconds, publisher=publisher,
                                    fetch=lambda request, timeout: ray.get(request, timeout=timeout))
        self.recovered: dict | None = None  # set in a process that Ray restarted
        if restarted_by_ray() and run_dir is not None:
            self.recovered = recover(self.worker, run_dir)

    def recovery(self) -> dict | None:
        """What this process restored after a restart (None in the first process)."""
        return self.recovered

    def __repr__(self) -> str:
        # Ray shows this on the dashboard's Actors page and before the actor's log lines. It
        # reads it once, before the first weights are published, so no version is shown.
        return (f"LearnerActor(learner, {self.cfg.learner.algorithm} on {self.device}, "
                f"tasks {', '.join(self.cfg.env.tasks)})")

    def device_name(self) -> str:
        return self.device

    def load(self, path: str) -> dict:
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        self.learner.load_state_dict(load_checkpoint(path, map_location="cpu"))
        return self.counters()

    def save(self, run_dir: str, keep: int) -> str:
        return str(save_checkpoint(run_dir, self.learner.state_dict(), self.learner.updates, keep))

    def publish(self) -> int:
        return self.worker.publish()

    def counters(self) -> dict:
        return self.worker.counters()

    def train(self, max_updates: int, max_seconds: float) -> dict:
        """Run up to `max_updates` updates or `max_seconds`; returns the chunk's metrics."""
        return self.worker.train(max_updates, max_seconds)
