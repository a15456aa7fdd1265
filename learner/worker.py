"""The learner's loop, without Ray: pull batches through a `BatchSource`, step the `Algorithm`,
publish the actors' weights on a cadence in updates and seconds, and report each chunk's
metrics. Every wait in a chunk is bounded by what is left of the chunk's seconds.

`LearnerActor` (learner/remote.py) is its thin Ray wrapper: it hands in `ray.get` to resolve
a source's requests and a publisher whose thread puts the weights in the object store and tells
the weight store (learner/publish.py). Tests hand in plain fakes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from learner.algorithm import Algorithm, BatchSource
from learner.publish import PublishCadence, SyncPublisher


_NO_REPLY = object()      # no fetched reply held (a reply itself may be None: the queue timed out)
LATE_SLACK_SECONDS = 1.0  # past a chunk's own compute, before the chunk counts as late
FLUSH_SECONDS = 10.0      # the longest a chunk's end waits for the publish in flight


class LearnerWorker:
    """`publish_weights(version, weights)` delivers `algorithm.actor_weights()` to the actors
    (or hand in a `publisher`, learner/publish.py, to publish from a thread);
    `fetch(request, timeout)` waits at most `timeout` seconds for what `source.request()`
    returned (`ray.get` in a Ray actor) and raises `TimeoutError` past it, and the source's
    `receive(reply, timeout)` does the same for the data the reply names, so no wait can
    stretch a chunk past `max_seconds`;
    `clock` gives seconds (monotonic), for `max_seconds`, the publish cadence and the wait
    fraction.

    A chunk is late when it ends more than its slowest update, its closing work (the metric
    read and the publish of its last update, each of its waits bounded by `FLUSH_SECONDS`)
    and `LATE_SLACK_SECONDS` after `max_seconds`: an update is never cut short, so that is the most
    a chunk whose every wait is bounded can overrun. Late chunks are counted (`late_chunks`)."""

    def __init__(self, algorithm: Algorithm, source: BatchSource, publish_every: int,
                 publish_weights: Callable[[int, dict], None] | None = None,
                 fetch: Callable[[Any, float], Any] = lambda request, timeout: request,
                 clock: Callable[[], float] = time.monotonic, publish_seconds: float = 0.0,
                 publisher: SyncPublisher | None = None):
        if publisher is None and publish_weights is None:
            raise ValueError("LearnerWorker needs publish_weights or a publisher")
        self.algorithm = algorithm
        self.source = source
        self.cadence = PublishCadence(publish_every, publish_seconds)
        self.publish_every = publish_every
        self.publisher = publisher if publisher is not None else SyncPublisher(publish_weights)
        self._fetch = fetch
        self._clock = clock
        self._pending = None      # a request whose reply has not been fetched
        self._reply = _NO_REPLY   # a fetched reply whose data did not arrive within its chunk
        self.sample_timeouts = 0  # requests that came back empty (the queue was not filled)
        self.fetch_timeouts = 0   # chunks that ended waiting for a reply or its data
        self.publishes_deferred = 0  # publish points reached while the previous one was in flight
        self.flush_timeouts = 0   # chunk ends whose publish was still on its way after FLUSH_SECONDS
        self.chunks = 0
        self.late_chunks = 0

    @property
    def published_version(self) -> int:
        return self.publisher.published_version

    def publish(self) -> int:
        """Publish the current weights, versioned by the update count, and wait until the weight
        store and the shards hold them; returns that version."""
        if not self.publisher.flush(FLUSH_SECONDS):
            raise TimeoutError(f"the previous publish of the weights did not finish within "
                               f"{FLUSH_SECONDS:.0f} s")
        version = self.algorithm.updates
        SyncPublisher.submit(self.publisher, version, self.algorithm)
        self.cadence.mark(version, self._clock())
        return self.published_version

    def _maybe_publish(self, at_chunk_end: bool = False) -> None:
        updates, now = self.algorithm.updates, self._clock()
        # A chunk's end publishes what its updates earned even inside publish_seconds: chunks
        # come at most once per chunk's seconds, and the driver then sees the published version.
        if self.cadence.due(updates, now, ignore_seconds=at_chunk_end):
            if at_chunk_end:
                self._flush()
            if self.publisher.submit(updates, self.algorithm):
                self.cadence.mark(updates, now)
            else:
                self.publishes_deferred += 1  # still due: the next update boundary tries again
        if at_chunk_end:
            self._flush()  # so the version the chunk reports is the one the actors can fetch

    def _flush(self) -> None:
        if not self.publisher.flush(FLUSH_SECONDS):
            self.flush_timeouts += 1

    def counters(self) -> dict:
        return {"updates": self.algorithm.updates, "frames": self.algorithm.frames,
                "nonfinite_total": self.algorithm.nonfinite_total,
                "lost_unrolls": self.source.lost, "sample_timeouts": self.sample_timeouts,
                "version": self.published_version, "publishes": self.publisher.publishes,
                "publish_bytes": self.publisher.bytes_per_publish,
                "chunks": self.chunks, "late_chunks": self.late_chunks}

    def train(self, max_updates: int, max_seconds: float) -> dict:
        """Run up to `max_updates` updates or `max_seconds`; returns the chunk's metrics, the
        episodes its batches reported and the counters."""
        start = self._clock()
        episodes, lags = [], []
        waited, done, timeouts, slowest_step = 0.0, 0, 0, 0.0
        publishes_before = self.publisher.publishes
        while done < max_updates and self._clock() - start < max_seconds:
            t0 = self._clock()
            if self._reply is _NO_REPLY:
                if self._pending is None:
                    self._pending = self.source.request()
                try:
                    self._reply = self._fetch(self._pending, max(0.0, max_seconds - (t0 - start)))
                except TimeoutError:
                    # The chunk's time is up; the request stays pending for the next chunk.
                    waited += self._clock() - t0
                    self.fetch_timeouts += 1
                    break
                # Ask for the next batch now so it is on its way while this update runs; it
                # stays pending across chunks, so no request is ever dropped.
                self._pending = self.source.request()
            try:
                batch = self.source.receive(self._reply, max(0.0, max_seconds - (self._clock() - start)))
            except TimeoutError:
                # The reply names data still on its way: it is kept for the next chunk.
                waited += self._clock() - t0
                self.fetch_timeouts += 1
                break
            self._reply = _NO_REPLY
            t1 = self._clock()
            waited += t1 - t0
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
            if self.algorithm.updates != updates_before:
                self._maybe_publish()
            slowest_step = max(slowest_step, self._clock() - t1)
        # The chunk's one read of the device: every update's metrics, averaged; a run of
        # non-finite steps raises here.
        end_start = self._clock()
        out = self.algorithm.read_metrics()
        # An algorithm whose step reads nothing back learns how many updates stepped only at
        # the read; and what the chunk's last updates earned is published before it returns.
        self._maybe_publish(at_chunk_end=True)
        end = self._clock()
        end_seconds = end - end_start  # the chunk's own closing work, bounded
        self.sample_timeouts += timeouts
        elapsed = end - start
        overrun = max(0.0, elapsed - max_seconds)
        late = overrun > slowest_step + end_seconds + LATE_SLACK_SECONDS
        self.chunks += 1
        self.late_chunks += int(late)
        out["learner/nonfinite_total"] = float(self.algorithm.nonfinite_total)  # a counter
        out.update({
            "learner/updates_in_chunk": float(done), "learner/seconds": elapsed,
            "learner/overrun_seconds": overrun,
            "learner/late_chunks": float(self.late_chunks),
            "learner/wait_fraction": waited / max(elapsed, 1e-9),
            "learner/lag_mean": float(np.mean(lags)) if lags else 0.0,
            "learner/lost_unrolls": float(self.source.lost),
            "learner/sample_timeouts": float(timeouts),
            "learner/fetch_timeouts": float(self.fetch_timeouts),
            "weights/publishes": float(self.publisher.publishes - publishes_before),
            "weights/publish_bytes": float(self.publisher.bytes_per_publish),
            "weights/publish_timeouts": float(self.publisher.timeouts),
            "weights/publishes_deferred": float(self.publishes_deferred),
            "weights/flush_timeouts": float(self.flush_timeouts),
        })
        return {"metrics": out, "episodes": episodes, "counters": self.counters()}
