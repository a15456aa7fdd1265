"""Publishing the actors' weights off the update's path: when, how the copy leaves the device,
and the thread that hands it to the object store and the weight store.

Why: a publish per update was a blocking device→host copy, a `ray.put` of the whole network
and two blocking calls, all between two updates; and every actor fetched every version (a
Nature CNN is 6.7 MB: about 20 GB/s across 200 actors at one unroll per actor every 0.07 s).

- `PublishCadence`: a publish is due once `every_updates` updates *and* `every_seconds`
  seconds have passed since the last one. Updates bound the lag; seconds bound the rate, so a
  fast learner does not ship its network to every actor after each of its updates.
- `HostSnapshot`: copies the actor's weights into reused host buffers. On CUDA the copy runs on
  a side stream into pinned memory, ordered after the update that wrote them (the side stream
  waits for the update's stream) and before the next update writes them again (the update's
  stream waits for the copy's event, on the device: the host never blocks); the publishing
  thread waits for that event. On the CPU it is a plain copy on the update's path (a memcpy of
  the weights; there is no device to overlap with).
- `BackgroundPublisher`: one thread, one snapshot in flight. A publish that comes due while the
  previous one is still on its way waits for the next update boundary (the newest weights win;
  no queue of stale versions builds up). A failure in the thread (the weight store died)
  reaches the learner's loop at its next call, as the blocking publish raised it before.
- `SyncPublisher`: the same interface, publishing in the caller's thread: for tests and for
  learners that need no overlap.

Versions stay exact: a snapshot is taken between two updates, with the update count of that
moment as its version, so the weights an actor acts with are those of the version it records.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch


class PublishCadence:
    """Due once `every_updates` updates and `every_seconds` seconds have passed since the last
    publish (the first publish is due after `every_updates` updates)."""

    def __init__(self, every_updates: int, every_seconds: float = 0.0):
        if every_updates < 1:
            raise ValueError(f"publish_every must be >= 1, got {every_updates}")
        if every_seconds < 0:
            raise ValueError(f"publish_seconds must be >= 0, got {every_seconds}")
        self.every_updates, self.every_seconds = every_updates, every_seconds
        self.last_updates: int | None = None
        self.last_time = float("-inf")

    def due(self, updates: int, now: float, ignore_seconds: bool = False) -> bool:
        if updates - (self.last_updates or 0) < self.every_updates:
            return False
        return ignore_seconds or now - self.last_time >= self.every_seconds

    def mark(self, updates: int, now: float) -> None:
        self.last_updates, self.last_time = updates, now


class HostSnapshot:
    """Copies a dict of tensors into host buffers it reuses (pinned on CUDA) and hands them out
    as numpy arrays once the copy is done. One snapshot at a time: `start` must not be called
    again before the arrays of the previous one have been consumed."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] | None = None
        self._stream: torch.cuda.Stream | None = None
        self._event: torch.cuda.Event | None = None

    def start(self, tensors: dict[str, torch.Tensor]) -> None:
        first = next(iter(tensors.values()))
        if self._buffers is None or self._buffers.keys() != tensors.keys():
            pin = first.is_cuda
            self._buffers = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
                             for k, t in tensors.items()}
        if not first.is_cuda:
            for key, tensor in tensors.items():
                self._buffers[key].copy_(tensor.detach())
            return
        update_stream = torch.cuda.current_stream(first.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(first.device)
            self._event = torch.cuda.Event()
        self._stream.wait_stream(update_stream)      # after the update that wrote them
        with torch.cuda.stream(self._stream):
            for key, tensor in tensors.items():
                self._buffers[key].copy_(tensor.detach(), non_blocking=True)
            self._event.record(self._stream)
        update_stream.wait_event(self._event)        # before the next update writes them

    def wait(self) -> dict[str, np.ndarray]:
        """The snapshot as numpy arrays (views of the buffers), once its copy has finished."""
        if self._event is not None:
            self._event.synchronize()
        return {k: b.numpy() for k, b in self._buffers.items()}


def weights_nbytes(weights: dict) -> int:
    return int(sum(np.asarray(v).nbytes for v in weights.values()))


class SyncPublisher:
    """Publishes in the caller's thread: `publish_weights(version, algorithm.actor_weights())`."""

    def __init__(self, publish_weights: Callable[[int, dict], None]):
        self._publish_weights = publish_weights
        self.published_version = -1
        self.publishes = 0
        self.bytes_per_publish = 0
        self.timeouts = 0

    @property
    def busy(self) -> bool:
        return False

    def submit(self, version: int, algorithm) -> bool:
        weights = algorithm.actor_weights()
        self._publish_weights(version, weights)
        self.published_version, self.bytes_per_publish = version, weights_nbytes(weights)
        self.publishes += 1
        return True

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass


class BackgroundPublisher(SyncPublisher):
    """`submit` starts the host copy and returns; a thread waits for the copy and calls
    `publish_weights(version, weights)` (which `ray.put`s them and tells the weight store and
    the shards). `publish_weights` raising `TimeoutError` is counted (`timeouts`) and the next
    publish tries again; any other exception is raised by the next `submit` or `flush`."""

    def __init__(self, publish_weights: Callable[[int, dict], None]):
        super().__init__(publish_weights)
        self._snapshot = HostSnapshot()
        self._lock = threading.Condition()
        self._job: int | None = None      # the version whose snapshot awaits the thread
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="weight-publisher")
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._job is not None

    def submit(self, version: int, algorithm) -> bool:
        """Start publishing `algorithm`'s current weights as `version`; False (nothing done)
        while the previous publish is still on its way."""
        with self._lock:
            self._raise_error()
            if self._job is not None:
                return False
        self._snapshot.start(algorithm.actor_tensors())
        with self._lock:
            self._job = version
            self._lock.notify_all()
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the publish in flight; False if it is still going."""
        with self._lock:
            done = self._lock.wait_for(lambda: self._job is None or self._error is not None, timeout)
            self._raise_error()
            return done

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._job is not None or self._closed)
                if self._closed:
                    return
                version = self._job
            try:
                weights = self._snapshot.wait()
                self._publish_weights(version, weights)
                published = True
            except TimeoutError:
                published = False
                self.timeouts += 1
            except BaseException as error:  # noqa: BLE001 - handed to the learner's loop
                published = False
                with self._lock:
                    self._error = error
            with self._lock:
                if published:
                    self.published_version = version
                    self.bytes_per_publish = weights_nbytes(weights)
                    self.publishes += 1
                self._job = None
                self._lock.notify_all()
