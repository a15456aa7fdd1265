"""The driver loop's stop rules that need no Ray: a fleet with no live actor ends the run."""
from accord import loop as loop_module
from accord.loop import TrainingLoop


class _Health:
    def __init__(self):
        self.all_unreachable = False


def _loop():
    tl = TrainingLoop.__new__(TrainingLoop)
    tl.health, tl._silent_since = _Health(), None
    return tl


def test_fleet_is_dead_only_after_every_actor_is_silent_for_the_grace_period(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(loop_module.time, "monotonic", lambda: now[0])
    tl = _loop()
    assert not tl._fleet_dead()
    tl.health.all_unreachable = True
    assert not tl._fleet_dead()              # silent from now on
    now[0] += loop_module.FLEET_DEAD_SECONDS - 1
    assert not tl._fleet_dead()              # a restart takes seconds, not a minute
    tl.health.all_unreachable = False        # one actor answered: the clock starts over
    assert not tl._fleet_dead()
    tl.health.all_unreachable = True
    now[0] += 1
    assert not tl._fleet_dead()
    now[0] += loop_module.FLEET_DEAD_SECONDS
    assert tl._fleet_dead()


def test_a_run_without_rollout_actors_has_no_dead_fleet():
    """A run fed over gRPC alone has no actors to poll; that is not a fleet that stopped answering."""
    from accord.loop import ActorHealth

    health = ActorHealth([])
    health.poll()
    assert not health.all_unreachable and health.unreachable == 0


def test_merged_shard_stats_add_counts_and_recompute_the_ratio_from_the_sums():
    from accord.loop import merge_service_stats

    merged = merge_service_stats([
        {"replay/size": 10.0, "replay/sampled": 30.0, "replay/inserted": 10.0, "replay/samples_per_insert": 3.0},
        {"replay/size": 5.0, "replay/sampled": 10.0, "replay/inserted": 20.0, "replay/samples_per_insert": 0.5},
    ])
    assert merged == {"replay/size": 15.0, "replay/sampled": 40.0, "replay/inserted": 30.0,
                      "replay/samples_per_insert": 40.0 / 30.0}
    # Nothing inserted yet: no division by zero; one row inserted is one, not clamped up.
    assert merge_service_stats([{"replay/sampled": 0.0, "replay/inserted": 0.0,
                                 "replay/samples_per_insert": 0.0}])["replay/samples_per_insert"] == 0.0
    assert merge_service_stats([{"replay/sampled": 2.0, "replay/inserted": 1.0,
                                 "replay/samples_per_insert": 2.0}])["replay/samples_per_insert"] == 2.0
    # A queue's stats get no ratio.
    assert merge_service_stats([{"queue/depth": 2.0}, {"queue/depth": 3.0}]) == {"queue/depth": 5.0}
