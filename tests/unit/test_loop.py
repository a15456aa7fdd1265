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
