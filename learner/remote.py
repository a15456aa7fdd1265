"""The learner actor: pulls batches from the queue/replay service through its algorithm's
`BatchSource`, steps the `Algorithm`, publishes the actors' weights every k updates and writes
checkpoints. It knows no algorithm (see learner/algorithm.py). The driver calls `train` in
short chunks so it can log, checkpoint and stop between them.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import ray
import torch

from learner.algorithm import build_algorithm, build_source
from learner.checkpoint import load_checkpoint, save_checkpoint


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("learner.device: 'cuda' requested but this learner sees no GPU")
    return requested


@ray.remote
class LearnerActor:
    def __init__(self, cfg, spec, service: list, weight_store):
        torch.set_num_threads(cfg.learner.num_threads)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        self.cfg = cfg
        self.weight_store = weight_store
        self.device = resolve_device(cfg.learner.device)
        self.learner = build_algorithm(cfg, spec, self.device)
        self.source = build_source(cfg, service)
        self._pending = None
        self.published_version = -1

    def device_name(self) -> str:
        return self.device

    def load(self, path: str) -> dict:
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        self.learner.load_state_dict(load_checkpoint(path, map_location="cpu"))
        return self.counters()

    def save(self, run_dir: str, keep: int) -> str:
        return str(save_checkpoint(run_dir, self.learner.state_dict(), self.learner.updates, keep))

    def publish(self) -> int:
        ref = ray.put(self.learner.actor_weights())  # once, however many actors read it
        ray.get(self.weight_store.publish.remote(self.learner.updates, [ref]))
        self.published_version = self.learner.updates
        return self.published_version

    def counters(self) -> dict:
        return {"updates": self.learner.updates, "frames": self.learner.frames,
                "nonfinite_total": self.learner.nonfinite_total, "lost_unrolls": self.source.lost,
                "version": self.published_version}

    def train(self, max_updates: int, max_seconds: float) -> dict:
        """Run up to `max_updates` updates or `max_seconds`; returns the chunk's metrics."""
        start = time.monotonic()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)  # a skipped update reports fewer keys
        episodes, lags = [], []
        waited, done = 0.0, 0
        while done < max_updates and time.monotonic() - start < max_seconds:
            if self._pending is None:
                self._pending = self.source.request()
            t0 = time.monotonic()
            reply = ray.get(self._pending)
            # Ask for the next batch now so it is on its way while this update runs.
            self._pending = self.source.request()
            batch = self.source.receive(reply)
            waited += time.monotonic() - t0
            if batch is None:
                continue
            # Lag: updates since the behaviour weights, as of the weights this update starts from.
            lags.extend(self.learner.updates - batch["versions"])
            metrics = self.learner.update(batch)
            for key, value in metrics.items():
                sums[key] += value
                counts[key] += 1
            episodes.extend(batch["episodes"].tolist())
            done += 1
            if self.learner.updates % self.cfg.learner.publish_every == 0:
                self.publish()
        elapsed = time.monotonic() - start
        out = {k: v / counts[k] for k, v in sums.items()}
        out["learner/nonfinite_total"] = float(self.learner.nonfinite_total)  # a counter, not a mean
        out.update({
            "learner/updates_in_chunk": float(done), "learner/seconds": elapsed,
            "learner/wait_fraction": waited / max(elapsed, 1e-9),
            "learner/lag_mean": float(np.mean(lags)) if lags else 0.0,
            "learner/lost_unrolls": float(self.source.lost),
        })
        return {"metrics": out, "episodes": episodes, "counters": self.counters()}
