"""The learner's loop, without Ray: pull batches through a `BatchSource`, step the `Algorithm`,
publish the actors' weights every k updates, and report each chunk's metrics.

`LearnerActor` (learner/remote.py) is its thin Ray wrapper: it hands in `ray.get` to resolve
a source's requests and a function that puts the weights in the object store and tells the
weight store. Tests hand in plain fakes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from learner.algorithm import Algorithm, BatchSource


class LearnerWorker:
    """`publish_weights(version, weights)` delivers `algorithm.actor_weights()` to the actors;
    `fetch(request, timeout)` waits at most `timeout` seconds for what `source.request()`
    returned (`ray.get` in a Ray actor) and raises `TimeoutError` past it, so one slow reply
    cannot stretch a chunk past `max_seconds`;
    `clock` gives seconds (monotonic), for `max_seconds` and the wait fraction."""

    def __init__(self, algorithm: Algorithm, source: BatchSource, publish_every: int,
                 publish_weights: Callable[[int, dict], None],
                 fetch: Callable[[Any, float], Any] = lambda request, timeout: request,
                 clock: Callable[[], float] = time.monotonic):
        if publish_every < 1:
            raise ValueError(f"publish_every must be >= 1, got {publish_every}")
        self.algorithm = algorithm
        self.source = source
        self.publish_every = publish_every
        self._publish_weights = publish_weights
        self._fetch = fetch
        self._clock = clock
        self._pending = None
        self.published_version = -1
        self.sample_timeouts = 0  # requests that came back empty (the queue was not filled)
        self.fetch_timeouts = 0   # chunks that ended waiting for a reply

    def publish(self) -> int:
        """Publish the current weights, versioned by the update count; returns that version."""
        self._publish_weights(self.algorithm.updates, self.algorithm.actor_weights())
        self.published_version = self.algorithm.updates
        return self.published_version

    def counters(self) -> dict:
        return {"updates": self.algorithm.updates, "frames": self.algorithm.frames,
                "nonfinite_total": self.algorithm.nonfinite_total,
                "lost_unrolls": self.source.lost, "sample_timeouts": self.sample_timeouts,
                "version": self.published_version}

    def train(self, max_updates: int, max_seconds: float) -> dict:
        """Run up to `max_updates` updates or `max_seconds`; returns the chunk's metrics, the
        episodes its batches reported and the counters."""
        start = self._clock()
        episodes, lags = [], []
        waited, done, timeouts = 0.0, 0, 0
        while done < max_updates and self._clock() - start < max_seconds:
            if self._pending is None:
                self._pending = self.source.request()
            t0 = self._clock()
            try:
                reply = self._fetch(self._pending, max(0.0, max_seconds - (t0 - start)))
            except TimeoutError:
                # The chunk's time is up; the request stays pending for the next chunk.
                waited += self._clock() - t0
                self.fetch_timeouts += 1
                break
            # Ask for the next batch now so it is on its way while this update runs; it stays
            # pending across chunks, so no request is ever dropped.
            self._pending = self.source.request()
            batch = self.source.receive(reply)
            waited += self._clock() - t0
            if batch is None:
                timeouts += 1
                continue
            # Lag: updates since the behaviour weights, as of the weights this update starts from.
            lags.extend(self.algorithm.updates - np.asarray(batch["versions"]))
            updates_before = self.algorithm.updates
            self.algorithm.step(batch)      # no host read: the metrics stay on the device
            episodes.extend(np.asarray(batch["episodes"]).tolist())
            done += 1
            # A step the host already knows was skipped changed no weight: nothing to publish.
            stepped = self.algorithm.updates != updates_before
            if stepped and self.algorithm.updates % self.publish_every == 0:
                self.publish()
        # The chunk's one read of the device: every update's metrics, averaged; a run of
        # non-finite steps raises here.
        out = self.algorithm.read_metrics()
        # An algorithm whose step reads nothing back learns how many updates stepped only here:
        # publish now if the chunk crossed a publishing point that the loop could not see.
        if (self.algorithm.updates // self.publish_every
                > max(self.published_version, 0) // self.publish_every):
            self.publish()
        self.sample_timeouts += timeouts
        elapsed = self._clock() - start
        out["learner/nonfinite_total"] = float(self.algorithm.nonfinite_total)  # a counter
        out.update({
            "learner/updates_in_chunk": float(done), "learner/seconds": elapsed,
            "learner/wait_fraction": waited / max(elapsed, 1e-9),
            "learner/lag_mean": float(np.mean(lags)) if lags else 0.0,
            "learner/lost_unrolls": float(self.source.lost),
            "learner/sample_timeouts": float(timeouts),
            "learner/fetch_timeouts": float(self.fetch_timeouts),
        })
        return {"metrics": out, "episodes": episodes, "counters": self.counters()}
