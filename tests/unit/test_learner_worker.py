"""`LearnerWorker.train` with a scripted source, a counting algorithm and a fake clock: updates,
publishing every k, skipped updates, lag, sample timeouts, lost unrolls, prefetching across
chunks, and the chunk's metrics. `UnrollSource` with fake shards and a fake object store."""
from __future__ import annotations

import numpy as np
import pytest
import ray

import learner.impala.source as source_module
from learner.impala.source import UnrollSource
from learner.worker import LearnerWorker


class CountingAlgorithm:
    """Steps unless the batch says `skip`; reports the batch's `loss` as its metric."""

    def __init__(self):
        self.updates = self.frames = self.nonfinite_total = 0
        self.seen = []
        self._sums, self._counts = {}, {}

    def update(self, batch):
        self.seen.append(batch["id"])
        if batch.get("skip"):
            self.nonfinite_total += 1
            return {"learner/nonfinite_total": float(self.nonfinite_total)}
        self.updates += 1
        self.frames += 10
        return {"loss/total": batch["loss"], "learner/nonfinite_total": float(self.nonfinite_total)}

    def step(self, batch):
        for key, value in self.update(batch).items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1

    def read_metrics(self):
        out = {k: v / self._counts[k] for k, v in self._sums.items()}
        self._sums, self._counts = {}, {}
        return out

    def actor_weights(self):
        return {"w": np.array([self.updates])}


class ScriptedSource:
    """Replies in order: a dict is a batch, None a queue timeout, an int that many lost unrolls
    (and no batch)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = 0
        self.lost = 0

    def request(self):
        self.requests += 1
        return self.requests - 1  # the token of the reply it will get

    def receive(self, token, timeout=None):
        reply = self.replies[token] if token < len(self.replies) else None
        if isinstance(reply, int):
            self.lost += reply
            return None
        return reply


def batch(i, versions=(0,), loss=1.0, skip=False, episodes=()):
    return {"id": i, "versions": np.asarray(versions), "loss": loss, "skip": skip,
            "episodes": np.asarray(episodes, dtype=float).reshape(-1, 4)}


class FakeClock:
    def __init__(self, tick: float = 1.0):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def make_worker(replies, publish_every=1, clock=None):
    algorithm, source, published, fetched = CountingAlgorithm(), ScriptedSource(replies), [], []

    def fetch(token, timeout):
        assert timeout >= 0
        fetched.append(token)
        return token

    worker = LearnerWorker(algorithm, source, publish_every,
                           publish_weights=lambda v, w: published.append((v, int(w["w"][0]))),
                           fetch=fetch, clock=clock or FakeClock(0.0))
    return worker, algorithm, source, published, fetched


def test_weights_are_published_every_k_updates_with_their_version():
    worker, algorithm, _, published, _ = make_worker([batch(i) for i in range(7)], publish_every=3)
    out = worker.train(max_updates=7, max_seconds=1e9)
    assert algorithm.updates == 7 and out["metrics"]["learner/updates_in_chunk"] == 7
    assert published == [(3, 3), (6, 6)]
    assert worker.published_version == 6 and out["counters"]["version"] == 6
    assert worker.publish() == 7 and published[-1] == (7, 7)


def test_a_skipped_update_publishes_nothing_and_is_counted():
    replies = [batch(0), batch(1, skip=True), batch(2)]
    worker, algorithm, _, published, _ = make_worker(replies)
    out = worker.train(max_updates=3, max_seconds=1e9)
    assert published == [(1, 1), (2, 2)]
    assert out["metrics"]["learner/nonfinite_total"] == 1.0
    assert out["counters"]["nonfinite_total"] == 1 and out["counters"]["updates"] == 2
    # The mean of a metric runs over the updates that reported it.
    assert out["metrics"]["loss/total"] == 1.0


def test_metrics_are_means_over_the_chunk_and_episodes_are_collected():
    replies = [batch(0, loss=1.0, episodes=[[0, 5, 3, np.nan]]),
               batch(1, loss=3.0, episodes=[[1, 7, 4, 1.0], [0, 2, 1, np.nan]])]
    worker, *_ = make_worker(replies)
    out = worker.train(max_updates=2, max_seconds=1e9)
    assert out["metrics"]["loss/total"] == 2.0
    assert [row[:3] for row in out["episodes"]] == [[0, 5, 3], [1, 7, 4], [0, 2, 1]]
    assert out["counters"]["frames"] == 20


def test_lag_is_measured_against_the_weights_each_update_starts_from():
    replies = [batch(0, versions=(0, 0)), batch(1, versions=(0, 1)), batch(2, versions=(0, 2))]
    worker, *_ = make_worker(replies)
    out = worker.train(max_updates=3, max_seconds=1e9)
    # Updates start from versions 0, 1, 2: lags (0, 0), (1, 0), (2, 0).
    assert out["metrics"]["learner/lag_mean"] == pytest.approx(3 / 6)


def test_sample_timeouts_are_counted_and_are_not_updates():
    replies = [None, batch(0), None, None, batch(1)]
    worker, algorithm, *_ = make_worker(replies)
    out = worker.train(max_updates=2, max_seconds=1e9)
    assert algorithm.seen == [0, 1]
    assert out["metrics"]["learner/sample_timeouts"] == 3.0
    assert out["counters"]["sample_timeouts"] == 3


@pytest.mark.parametrize("tick", [1.0, 1 / 64])  # binary fractions: the sums are exact
def test_a_chunk_that_gets_no_batch_ends_at_max_seconds(tick):
    clock = FakeClock(tick=tick)
    clock.now = 100.0
    worker, algorithm, source, *_ = make_worker([], clock=clock)
    out = worker.train(max_updates=5, max_seconds=10 * tick)
    # The clock moves 1 s per reading; each round reads it four times (the loop check, before
    # the fetch, for the receive's timeout, after the receive) and waits 2 s. Start 101; checks
    # at 1, 5, 9 s pass and the one at 13 s ends the chunk; the closing work's start, the
    # publish check and the end read the clock three times more: 16 s.
    assert algorithm.updates == 0 and out["metrics"]["learner/updates_in_chunk"] == 0
    assert out["metrics"]["learner/sample_timeouts"] == 3.0 and source.requests == 4
    assert out["metrics"]["learner/seconds"] == 16 * tick
    assert out["metrics"]["learner/overrun_seconds"] == 6 * tick
    assert out["metrics"]["learner/wait_fraction"] == pytest.approx(6 / 16)
    assert out["metrics"]["learner/lag_mean"] == 0.0


def test_a_reply_slower_than_the_chunk_ends_the_chunk_on_time_and_stays_pending():
    """The fetch gets what is left of the chunk's seconds; a reply that needs longer ends the
    chunk (counted), and the next chunk takes the same request."""
    clock = FakeClock(tick=0.0)
    ready_at = {0: 0.0, 1: 25.0, 2: 25.0}
    algorithm, source = CountingAlgorithm(), ScriptedSource([batch(0), batch(1), batch(2)])
    asked = []

    def fetch(token, timeout):
        asked.append((token, timeout))
        if ready_at[token] > clock.now + timeout:
            clock.now += timeout              # waited all it was allowed to
            raise TimeoutError
        clock.now = max(clock.now, ready_at[token])
        return token

    worker = LearnerWorker(algorithm, source, 1, publish_weights=lambda v, w: None, fetch=fetch,
                           clock=clock)
    out = worker.train(max_updates=3, max_seconds=10.0)
    assert algorithm.seen == [0] and out["metrics"]["learner/seconds"] == 10.0
    assert asked == [(0, 10.0), (1, 10.0)]
    assert out["metrics"]["learner/fetch_timeouts"] == 1.0
    out = worker.train(max_updates=2, max_seconds=30.0)
    assert algorithm.seen == [0, 1, 2] and asked[2][0] == 1      # the pending request, again


def test_counters_before_anything_and_timeouts_add_up_across_chunks():
    worker, *_ = make_worker([None, batch(0), None, batch(1)])
    assert worker.counters() == {"updates": 0, "frames": 0, "nonfinite_total": 0,
                                 "lost_unrolls": 0, "sample_timeouts": 0, "version": -1,
                                 "publishes": 0, "publish_bytes": 0, "chunks": 0, "late_chunks": 0}
    worker.train(max_updates=1, max_seconds=1e9)
    out = worker.train(max_updates=1, max_seconds=1e9)
    assert out["metrics"]["learner/sample_timeouts"] == 1.0  # this chunk's
    assert out["counters"]["sample_timeouts"] == 2  # the run's


def test_lost_unrolls_are_reported_in_the_metrics_and_counters():
    replies = [batch(0), 2, batch(1), 1, batch(2)]
    worker, algorithm, *_ = make_worker(replies)
    out = worker.train(max_updates=3, max_seconds=1e9)
    assert algorithm.seen == [0, 1, 2]
    assert out["metrics"]["learner/lost_unrolls"] == 3.0 and out["counters"]["lost_unrolls"] == 3


def test_the_next_batch_is_requested_before_the_update_and_kept_across_chunks():
    worker, algorithm, source, _, fetched = make_worker([batch(i) for i in range(6)])
    worker.train(max_updates=2, max_seconds=1e9)
    assert source.requests == 3  # the third is in flight while the chunk ends
    worker.train(max_updates=2, max_seconds=1e9)
    assert fetched == [0, 1, 2, 3] and algorithm.seen == [0, 1, 2, 3]
    assert source.requests == 5


def test_publish_every_must_be_positive():
    with pytest.raises(ValueError, match="publish_every"):
        LearnerWorker(CountingAlgorithm(), ScriptedSource([]), 0, publish_weights=print)


# --- UnrollSource -------------------------------------------------------------------------------


class FakeShard:
    def __init__(self, name, calls):
        self.sample = self
        self.name, self.calls = name, calls

    def remote(self, n, timeout):
        self.calls.append((self.name, n, timeout))
        return f"reply-{self.name}"


def unroll(task_id, version):
    T, M = 2, 1
    return {"obs": np.zeros((T + 1, M, 3), np.float32), "actions": np.zeros((T, M), np.int64),
            "rewards": np.zeros((T, M), np.float32), "terminated": np.zeros((T, M), bool),
            "truncated": np.zeros((T, M), bool), "behaviour_logits": np.zeros((T, M, 2), np.float32),
            "task_id": np.full(M, task_id), "version": version, "episodes": np.zeros((0, 4))}


def test_unroll_source_asks_the_shards_in_turn_for_n_unrolls():
    calls = []
    source = UnrollSource([FakeShard("a", calls), FakeShard("b", calls)], 4, timeout=0.5)
    assert [source.request() for _ in range(3)] == ["reply-a", "reply-b", "reply-a"]
    assert calls == [("a", 4, 0.5), ("b", 4, 0.5), ("a", 4, 0.5)]
    assert source.receive(None) is None  # the queue timed out


def test_unroll_source_counts_lost_unrolls_and_keeps_the_rest(monkeypatch):
    store = {"r0": unroll(0, 3), "r2": unroll(1, 5)}

    def fake_get(refs):
        if isinstance(refs, list):
            return [fake_get(r) for r in refs]
        if refs not in store:
            raise ray.exceptions.ObjectLostError(refs, "", "")
        return store[refs]

    monkeypatch.setattr(source_module.ray, "get", fake_get)
    # A lost object counts as ready: its error is.
    monkeypatch.setattr(source_module.ray, "wait", lambda refs, num_returns, timeout, fetch_local: (refs, []))
    source = UnrollSource([], 3)
    out = source.receive(["r0", "r1", "r2"])
    assert source.lost == 1
    assert out["versions"].tolist() == [3, 5] and out["task_id"].tolist() == [0, 1]
    assert source.receive(["gone"]) is None and source.lost == 2
    assert source.receive(["r2"])["versions"].tolist() == [5] and source.lost == 2


def test_unroll_source_waits_for_the_unrolls_at_most_its_timeout(monkeypatch):
    waits = []

    def fake_wait(refs, num_returns, timeout, fetch_local):
        waits.append((len(refs), num_returns, timeout, fetch_local))
        return refs[:1], refs[1:]  # one of two is here; the other is still on its way

    monkeypatch.setattr(source_module.ray, "wait", fake_wait)
    monkeypatch.setattr(source_module.ray, "get", lambda refs: pytest.fail("must not block on data not here"))
    with pytest.raises(TimeoutError, match="1 of 2 unrolls"):
        UnrollSource([], 2).receive(["r0", "r1"], timeout=0.25)
    assert waits == [(2, 2, 0.25, True)]
