"""Publishing off the update's path (learner/publish.py) and its cadence in the learner's loop:
the snapshot is a copy taken between updates, the thread publishes it with its version, a
publish due while one is in flight waits for the next boundary, a failure reaches the loop, a
timeout is counted; the cadence in updates and seconds; a chunk that overran is counted late."""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch

from learner.publish import BackgroundPublisher, HostSnapshot, PublishCadence, SyncPublisher
from learner.worker import LATE_SLACK_SECONDS, LearnerWorker
from tests.unit.test_learner_worker import CountingAlgorithm, FakeClock, ScriptedSource, batch


class TensorAlgorithm:
    """Weights as a torch tensor that `bump` changes in place, as an optimizer step does."""

    def __init__(self):
        self.w = torch.zeros(4)
        self.updates = 0

    def bump(self):
        self.w += 1
        self.updates += 1

    def actor_tensors(self):
        return {"w": self.w}


def _wait(predicate, timeout=30.0):
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not predicate():
            if done.wait(0.01):
                raise AssertionError(f"not within {timeout} s")
    finally:
        deadline.cancel()


def test_a_snapshot_is_a_copy_taken_when_it_starts():
    snapshot, w = HostSnapshot(), torch.arange(3.0)
    snapshot.start({"w": w})
    w += 10                      # the next update writes the weights in place
    assert snapshot.wait()["w"].tolist() == [0.0, 1.0, 2.0]


def test_the_thread_publishes_each_snapshot_with_the_version_it_was_taken_at():
    release, published = threading.Event(), []

    def publish(version, weights):
        release.wait(30)
        published.append((version, weights["w"].tolist()))

    algorithm, publisher = TensorAlgorithm(), BackgroundPublisher(publish)
    algorithm.bump()
    assert publisher.submit(1, algorithm) and publisher.busy
    algorithm.bump()             # the update goes on while the publish is on its way
    assert not publisher.submit(2, algorithm)   # one in flight: this one waits
    release.set()
    assert publisher.flush(30)
    assert published == [(1, [1.0] * 4)] and publisher.published_version == 1
    assert publisher.bytes_per_publish == 16 and publisher.publishes == 1
    assert publisher.submit(2, algorithm) and publisher.flush(30)
    assert published[-1] == (2, [2.0] * 4)
    assert publisher.published_version == 2 and publisher.publishes == 2
    publisher.close()


def test_a_failed_publish_reaches_the_loop_and_a_timed_out_one_is_counted():
    errors = iter([TimeoutError("store slow"), TimeoutError("still slow"), RuntimeError("weight store died")])

    def publish(version, weights):
        raise next(errors)

    algorithm, publisher = TensorAlgorithm(), BackgroundPublisher(publish)
    assert publisher.submit(1, algorithm) and publisher.flush(30)
    assert publisher.submit(2, algorithm) and publisher.flush(30)
    assert publisher.timeouts == 2 and publisher.published_version == -1 and publisher.publishes == 0
    assert publisher.submit(3, algorithm)
    with pytest.raises(RuntimeError, match="died"):
        publisher.flush(30)
    assert publisher.published_version == -1 and publisher.publishes == 0  # nothing was published
    assert publisher.bytes_per_publish == 0
    publisher.close()


@pytest.mark.parametrize("args, message", [((0,), "publish_every must be >= 1, got 0"),
                                           ((1, -0.5), "publish_seconds must be >= 0, got -0.5")])
def test_a_cadence_out_of_range_is_refused_with_the_value(args, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        PublishCadence(*args)


def test_cadence_needs_both_the_updates_and_the_seconds():
    cadence = PublishCadence(every_updates=2, every_seconds=5.0)
    assert not cadence.due(1, now=0.0) and cadence.due(2, now=0.0)  # the first: updates only
    cadence.mark(2, now=0.0)
    assert not cadence.due(3, now=100.0)            # one update: too few
    assert not cadence.due(4, now=4.0)              # two updates, 4 s: too soon
    assert cadence.due(4, now=4.0, ignore_seconds=True) and cadence.due(4, now=5.0)


def test_a_cadence_in_updates_alone_is_due_at_the_same_instant():
    cadence = PublishCadence(every_updates=2)   # no seconds asked for: updates alone decide
    cadence.mark(2, now=100.0)
    assert not cadence.due(3, now=100.0) and cadence.due(4, now=100.0)


def test_the_loop_publishes_on_the_seconds_cadence_and_at_the_chunk_end():
    clock = FakeClock(tick=0.25)
    published = []
    worker = LearnerWorker(CountingAlgorithm(), ScriptedSource([batch(i) for i in range(8)]),
                           publish_every=1, publish_seconds=3.0, clock=clock,
                           publish_weights=lambda v, w: published.append(v))
    out = worker.train(max_updates=8, max_seconds=1e9)
    # Each round reads the clock 6 times (1.5 s): the first update publishes, then every
    # second round (3 s), and the chunk's end publishes the last update whatever the time.
    assert published == [1, 3, 5, 7, 8]
    assert out["counters"]["version"] == 8 and out["metrics"]["weights/publishes"] == 5.0


def test_a_publish_due_while_one_is_in_flight_waits_for_the_next_update():
    published = []

    def publish(version, weights):
        # in flight until the loop has found it so at two update boundaries (a loop that never
        # defers fails the publish, which reaches the loop, instead of hanging)
        _wait(lambda: worker.publishes_deferred >= 2)
        published.append(version)

    publisher = BackgroundPublisher(publish)
    algorithm = CountingAlgorithm()
    algorithm.actor_tensors = lambda: {"w": torch.tensor([float(algorithm.updates)])}
    worker = LearnerWorker(algorithm, ScriptedSource([batch(i) for i in range(3)]), publish_every=1,
                           publisher=publisher, clock=FakeClock(0.0))
    out = worker.train(max_updates=3, max_seconds=1e9)
    # Update 1 goes out; 2 and 3 find it in flight; the chunk's end waits for it, then
    # publishes 3 and waits again, so the chunk reports what the actors can fetch.
    assert published == [1, 3] and out["counters"]["version"] == 3
    assert out["metrics"]["weights/publishes_deferred"] == 2.0
    publisher.close()


def test_a_wait_past_the_chunk_end_makes_the_chunk_late_and_a_slow_update_does_not():
    clock = FakeClock(tick=0.0)

    def fetch(token, timeout):
        clock.now += timeout + 5.0   # a wait that ignored its bound
        return token

    worker = LearnerWorker(CountingAlgorithm(), ScriptedSource([batch(0)]), 1,
                           publish_weights=lambda v, w: None, fetch=fetch, clock=clock)
    out = worker.train(max_updates=1, max_seconds=2.0)
    assert out["metrics"]["learner/overrun_seconds"] == 5.0 > LATE_SLACK_SECONDS
    assert out["counters"]["late_chunks"] == 1 and out["counters"]["chunks"] == 1

    algorithm = CountingAlgorithm()
    step = algorithm.step

    def slow_step(b):
        clock.now += 7.0             # compute: an update is never cut short
        step(b)
    algorithm.step = slow_step
    worker = LearnerWorker(algorithm, ScriptedSource([batch(0)]), 1,
                           publish_weights=lambda v, w: None, clock=clock)
    out = worker.train(max_updates=1, max_seconds=2.0)
    assert out["metrics"]["learner/overrun_seconds"] == 5.0
    assert out["counters"]["late_chunks"] == 0


def test_a_slow_publish_at_the_chunk_end_is_the_chunk_s_own_work_not_lateness():
    clock, published = FakeClock(tick=0.0), []

    def slow_publish(version, weights):
        clock.now += 5.0             # a publish to many actors: bounded, but slow
        published.append(version)

    # publish_seconds keeps the second chunk's update from publishing before the chunk's end
    worker = LearnerWorker(CountingAlgorithm(), ScriptedSource([batch(0), batch(1)]), 1,
                           publish_seconds=100.0, publish_weights=slow_publish, clock=clock)
    worker.train(max_updates=1, max_seconds=2.0)      # the first publish: its update's time
    out = worker.train(max_updates=1, max_seconds=2.0)
    assert published == [1, 2]   # the second at the chunk's end
    assert out["metrics"]["learner/overrun_seconds"] == 3.0 > LATE_SLACK_SECONDS
    assert out["counters"]["late_chunks"] == 0


def test_data_that_does_not_arrive_in_time_ends_the_chunk_and_is_received_next_chunk():
    class SlowData(ScriptedSource):
        def __init__(self, replies):
            super().__init__(replies)
            self.refusals = 1

        def receive(self, token, timeout=None):
            given.append(timeout)
            if self.refusals:
                self.refusals -= 1
                raise TimeoutError
            return super().receive(token)

    given = []
    algorithm, source = CountingAlgorithm(), SlowData([batch(0), batch(1)])
    worker = LearnerWorker(algorithm, source, 1, publish_weights=lambda v, w: None,
                           clock=FakeClock(0.0))
    out = worker.train(max_updates=2, max_seconds=7.0)
    assert given == [7.0]   # what is left of the chunk (the fake clock stands still)
    assert algorithm.seen == [] and out["metrics"]["learner/fetch_timeouts"] == 1.0
    worker.train(max_updates=2, max_seconds=7.0)
    assert algorithm.seen == [0, 1] and source.requests == 3  # the first reply was kept, not refetched


def test_host_buffers_are_reused_between_snapshots():
    snapshot = HostSnapshot()
    snapshot.start({"w": torch.ones(2)})
    first = snapshot.wait()["w"]
    snapshot.start({"w": torch.full((2,), 3.0)})
    assert np.shares_memory(first, snapshot.wait()["w"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_snapshot_is_ordered_between_the_update_before_and_the_one_after():
    """The copy runs on a side stream into pinned memory: it must see the write queued before
    it on the update's stream, and the write queued after it must not reach it."""
    w = torch.zeros(1 << 22, device="cuda")
    torch.cuda._sleep(50_000_000)     # keep the update's stream busy, so an unordered copy would race
    w += 1                            # the update before the snapshot
    snapshot = HostSnapshot()
    snapshot.start({"w": w})
    w += 1                            # the next update, queued at once
    host = snapshot.wait()["w"]
    assert snapshot._buffers["w"].is_pinned()
    assert float(host.min()) == float(host.max()) == 1.0
    torch.cuda.synchronize()
    assert float(w[0]) == 2.0


class FakeCudaRuntime:
    """Stands in for `torch.cuda` (and `torch.empty`'s pinned allocation) on a machine without
    CUDA: every stream operation the snapshot asks for is written to `log`, in order, so the
    ordering the CUDA branch promises can be read back without a device."""

    def __init__(self):
        self.log: list[tuple] = []
        self.update = FakeStream("update", self)
        self.current: FakeStream | None = self.update

    def current_stream(self, device):
        self.log.append(("current_stream", device))
        return self.update

    def Stream(self, device):  # noqa: N802 - torch.cuda's name
        self.log.append(("new_stream", device))
        return FakeStream("side", self)

    def Event(self):  # noqa: N802 - torch.cuda's name
        self.log.append(("new_event",))
        return FakeEvent(self)

    @contextlib.contextmanager
    def stream(self, stream):
        self.current = stream
        try:
            yield
        finally:
            self.current = self.update

    def empty(self, shape, *, dtype=None, pin_memory=False):
        self.log.append(("empty", tuple(shape), dtype, pin_memory))
        return FakeHostBuffer(torch.zeros(shape, dtype=dtype), self)


class FakeStream:
    def __init__(self, name, runtime):
        self.name, self.runtime = name, runtime

    def wait_stream(self, other):
        self.runtime.log.append((self.name, "waits_for_stream", getattr(other, "name", other)))

    def wait_event(self, event):
        self.runtime.log.append((self.name, "waits_for_event", getattr(event, "name", event)))


class FakeEvent:
    name = "copied"

    def __init__(self, runtime):
        self.runtime = runtime

    def record(self, stream):
        self.runtime.log.append(("record", getattr(stream, "name", stream)))

    def synchronize(self):
        self.runtime.log.append(("synchronize",))


class FakeHostBuffer:
    def __init__(self, tensor, runtime):
        self.tensor, self.runtime = tensor, runtime

    def copy_(self, source, non_blocking=False):
        self.tensor.copy_(source)
        stream = self.runtime.current
        self.runtime.log.append(("copy", stream.name if stream else None, non_blocking))

    def numpy(self):
        return self.tensor.numpy()


class FakeCudaTensor:
    """A device tensor as the snapshot sees it: `is_cuda`, a device, a shape, a dtype."""
    is_cuda, device = True, "cuda:0"

    def __init__(self, values):
        self.values, self.shape, self.dtype = values, values.shape, values.dtype

    def detach(self):
        return self.values


@pytest.fixture
def fake_cuda(monkeypatch):
    runtime = FakeCudaRuntime()
    for name in ("current_stream", "Stream", "Event", "stream"):
        monkeypatch.setattr(torch.cuda, name, getattr(runtime, name))
    monkeypatch.setattr(torch, "empty", runtime.empty)
    return runtime


def test_a_cuda_snapshot_copies_on_a_side_stream_ordered_after_the_update_and_before_the_next(fake_cuda):
    """The CUDA branch's protocol, without a device: pinned buffers of the weights' shape and
    dtype; the side stream (made once) waits for the update's stream, copies without blocking
    the host, records its event; the update's stream waits for that event; `wait` synchronizes
    on it before the arrays are read. (`test_cuda_snapshot_is_ordered_...` runs the real one.)"""
    snapshot = HostSnapshot()
    snapshot.start({"w": FakeCudaTensor(torch.arange(3, dtype=torch.float64))})
    assert fake_cuda.log == [
        ("empty", (3,), torch.float64, True),
        ("current_stream", "cuda:0"),
        ("new_stream", "cuda:0"),
        ("new_event",),
        ("side", "waits_for_stream", "update"),
        ("copy", "side", True),
        ("record", "side"),
        ("update", "waits_for_event", "copied"),
    ]
    fake_cuda.log.clear()
    assert snapshot.wait()["w"].tolist() == [0.0, 1.0, 2.0]
    assert fake_cuda.log == [("synchronize",)]
    fake_cuda.log.clear()
    snapshot.start({"w": FakeCudaTensor(torch.ones(3, dtype=torch.float64))})   # the stream, the event and the buffers are reused
    assert fake_cuda.log == [
        ("current_stream", "cuda:0"),
        ("side", "waits_for_stream", "update"),
        ("copy", "side", True),
        ("record", "side"),
        ("update", "waits_for_event", "copied"),
    ]
    assert snapshot.wait()["w"].tolist() == [1.0, 1.0, 1.0]


def test_the_sync_publisher_publishes_the_weights_in_the_callers_thread():
    published = []
    publisher = SyncPublisher(lambda version, weights: published.append((version, weights)))
    algorithm = TensorAlgorithm()
    algorithm.actor_weights = lambda: {"w": np.ones(2, dtype=np.float32)}
    assert publisher.submit(3, algorithm) and not publisher.busy
    assert [(v, w["w"].tolist()) for v, w in published] == [(3, [1.0, 1.0])]
    assert publisher.published_version == 3 and publisher.bytes_per_publish == 8
    assert publisher.flush(0.0) is True


def test_the_publisher_thread_is_a_named_daemon_and_ends_on_close():
    """Named, for a stack dump of the learner; a daemon, so a learner that exits mid-publish
    is not held by it; `close` ends it."""
    publisher = BackgroundPublisher(lambda version, weights: None)
    assert publisher._thread.name == "weight-publisher" and publisher._thread.daemon
    publisher.close()
    publisher._thread.join(30)
    assert not publisher._thread.is_alive()


def test_flush_gives_up_after_its_timeout_while_a_publish_hangs():
    release = threading.Event()
    publisher = BackgroundPublisher(lambda version, weights: release.wait(30))
    assert publisher.submit(1, TensorAlgorithm())
    assert publisher.flush(0.05) is False and publisher.busy
    release.set()
    assert publisher.flush(30) is True
    publisher.close()
