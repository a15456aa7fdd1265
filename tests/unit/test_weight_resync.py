"""Versions after a learner restart: the store serves whatever the learner published last, even
an older version than an actor holds, and the insert replies make that actor fetch it."""
from __future__ import annotations

from actors.remote import weights_changed
from learner.broadcast import LatestWeights


def test_the_store_serves_another_version_than_the_asker_has_older_included():
    store = LatestWeights()
    assert store.latest(-1) is None  # nothing published yet
    store.publish(10, ["w10"])
    assert store.latest(10) is None
    assert store.latest(7) == (10, ["w10"])
    store.publish(6, ["w6"])  # restarted from the checkpoint of update 6
    assert store.latest(10) == (6, ["w6"])
    assert store.latest(6) is None and store.current_version() == 6


def test_an_actor_fetches_when_any_reply_names_another_version():
    assert not weights_changed([], 4)
    assert not weights_changed([{"weights_version": -1}], 4)  # nothing published yet
    assert not weights_changed([{"weights_version": 4}, {"weights_version": 4}], 4)
    assert weights_changed([{"weights_version": 5}], 4)
    assert weights_changed([{"weights_version": 2}], 4)  # the learner went back
    # Shards hear of a publish one after another: one still naming ours is not enough to wait.
    assert weights_changed([{"weights_version": 4}, {"weights_version": 2}], 4)
