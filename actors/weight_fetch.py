"""How a rollout actor brings its weights up to the weight store's newest version, never
waiting without bound: a store or object transfer that does not answer within the timeout
leaves the actor acting on the weights it has (its unrolls name their version, so V-trace
corrects for the lag) and is counted, and the next newer version heard of is asked for again."""
from __future__ import annotations

import math
import threading
import time

import ray

# Generous: one fetch of a 6.7 MB CNN from a store serving 200 actors takes well under a second.
FETCH_TIMEOUT_SECONDS = 60.0
# How often an actor with no weights yet asks the store again.
POLL_SECONDS = 0.05


class WeightFetcher:
    """`store`: the run's `WeightStore` actor handle. `get` is `ray.get` (a fake in unit tests)."""

    def __init__(self, store, timeout: float = FETCH_TIMEOUT_SECONDS, get=ray.get):
        self.store = store
        self.timeout = timeout
        self._get = get
        self.fetches = 0    # versions adopted
        self.timeouts = 0   # fetches given up on after `timeout`

    def newer(self, version: int) -> tuple[int, dict] | None:
        """The store's newest `(version, weights)` if it holds another version than `version`;
        None if it does not, or if the answer or the weights did not come within the timeout."""
        try:
            reply = self._get(self.store.latest.remote(version), timeout=self.timeout)
            if reply is None:
                return None
            newest, (ref,) = reply
            weights = self._get(ref, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            self.timeouts += 1
            return None
        self.fetches += 1
        return newest, weights

    def first(self, seconds: float = math.inf, poll: float = POLL_SECONDS,
              stop: threading.Event | None = None) -> tuple[int, dict] | None:
        """The store's newest `(version, weights)`, waiting up to `seconds` for the learner's
        first publish (an actor may start before it); None if there are none by then, or once
        `stop` is set."""
        stop = stop or threading.Event()
        deadline = time.monotonic() + seconds
        while True:
            found = self.newer(-1)
            if found is not None or time.monotonic() >= deadline or stop.wait(poll):
                return found
