"""Weight broadcast: the learner publishes once, every actor reads the same object.

Every k updates the learner `ray.put`s its weights once (not once per actor) and hands the
reference and its version to this small store. Actors ask whether the store holds another
version than theirs and fetch it from the object store only then. Versions are the learner's
update counts; a learner restarted from a checkpoint publishes an older one, and actors that
acted with the lost updates' weights go back to it.
"""
from __future__ import annotations

import ray


class LatestWeights:
    """The newest published weights (a reference) and their version; `WeightStore` serves it."""

    def __init__(self):
        self.version = -1
        self._ref = None

    def publish(self, version: int, wrapped_ref: list) -> None:
        # Keep only the newest reference: older weights leave the object store.
        self.version, self._ref = version, wrapped_ref[0]

    def latest(self, have_version: int):
        """(version, [ref]) when the store holds another version than `have_version`, else None."""
        if self._ref is None or self.version == have_version:
            return None
        return self.version, [self._ref]

    def current_version(self) -> int:
        return self.version


@ray.remote(num_cpus=0)
class WeightStore(LatestWeights):
    def __repr__(self) -> str:
        # Ray reads the repr once the actor has started (Actors page, log prefix), before the
        # learner publishes, so it names the role only (who reads them depends on the run: the
        # rollout actors or their inference servers, and the evaluator where there is one).
        return "WeightStore(the learner's newest published weights)"
