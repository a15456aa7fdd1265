"""actors/weight_fetch.py: a rollout actor adopts a newer version, keeps its own when the store
has nothing newer, and gives up on a fetch that does not come in time (counted) instead of
waiting for ever."""
from __future__ import annotations

import threading

import pytest
import ray

from actors.weight_fetch import WeightFetcher

WEIGHTS = {"w": [1.0, 2.0]}


class Store:
    """The weight store's `latest(version)`: None if `version` is the newest, else
    (newest, [ref]); its call hands back what `get` is then asked for."""

    def __init__(self, newest: int):
        self.newest = newest
        self.latest = self
        self.asked: list[int] = []

    def remote(self, version: int):
        self.asked.append(version)
        return ("latest", version)


class Get:
    """`ray.get`: answers a store call or a weights ref; what is listed in `late` never comes."""

    def __init__(self, store: Store, late: set[str] = frozenset()):
        self.store, self.late = store, late
        self.timeouts: list[float] = []

    def __call__(self, ref, timeout):
        self.timeouts.append(timeout)
        kind = ref[0] if isinstance(ref, tuple) else ref
        if kind in self.late:
            raise ray.exceptions.GetTimeoutError(f"{kind} did not come")
        if kind == "latest":
            return None if ref[1] == self.store.newest else (self.store.newest, ["weights"])
        return WEIGHTS


def test_a_newer_version_is_adopted_and_counted():
    store = Store(newest=7)
    fetcher = WeightFetcher(store, timeout=5.0, get=Get(store))
    assert fetcher.newer(3) == (7, WEIGHTS)
    assert (fetcher.fetches, fetcher.timeouts) == (1, 0)
    assert fetcher.newer(7) is None  # ours is the newest: nothing fetched
    assert (fetcher.fetches, fetcher.timeouts, store.asked) == (1, 0, [3, 7])


@pytest.mark.parametrize("late", ["latest", "weights"])
def test_a_fetch_that_does_not_come_in_time_is_given_up_and_counted(late):
    store = Store(newest=7)
    get = Get(store, late={late})
    fetcher = WeightFetcher(store, timeout=5.0, get=get)
    assert fetcher.newer(3) is None
    assert (fetcher.fetches, fetcher.timeouts) == (0, 1)
    assert get.timeouts and set(get.timeouts) == {5.0}  # every wait is bounded
    get.late = set()
    assert fetcher.newer(3) == (7, WEIGHTS)  # asked again later, it comes
    assert (fetcher.fetches, fetcher.timeouts) == (1, 1)


class PublishingStore(Store):
    """A store the learner publishes version 0 to after `publish_after` asks."""

    def __init__(self, publish_after: int):
        super().__init__(newest=-1)  # nothing published: `latest(-1)` answers None
        self.publish_after = publish_after

    def remote(self, version: int):
        if len(self.asked) == self.publish_after:
            self.newest = 0
        return super().remote(version)


def test_first_waits_for_the_learner_s_first_publish():
    store = PublishingStore(publish_after=3)
    fetcher = WeightFetcher(store, timeout=5.0, get=Get(store))
    assert fetcher.first(seconds=30.0, poll=0.001) == (0, WEIGHTS)
    assert store.asked == [-1, -1, -1, -1]


def test_first_gives_up_at_its_deadline_when_nothing_is_published():
    store = Store(newest=-1)
    fetcher = WeightFetcher(store, timeout=5.0, get=Get(store))
    # 0.5 s of 1 ms polls: asked again and again, however loaded the machine
    assert fetcher.first(seconds=0.5, poll=0.001) is None
    assert len(store.asked) > 1 and fetcher.fetches == 0


@pytest.mark.timeout(30)  # a first() deaf to stop would wait for ever
def test_first_returns_nothing_once_asked_to_stop():
    # what a rollout actor's loop waits with when no weights came while it was constructed
    stop = threading.Event()

    class StoppingStore(Store):
        """Nothing published; the stop comes while `first` polls, at the third ask."""

        def remote(self, version: int):
            if len(self.asked) == 2:
                stop.set()
            return super().remote(version)

    store = StoppingStore(newest=-1)
    fetcher = WeightFetcher(store, timeout=5.0, get=Get(store))
    assert fetcher.first(poll=0.001, stop=stop) is None  # no deadline: only the stop ends it
    assert store.asked == [-1, -1, -1] and fetcher.fetches == 0
