"""The training loop's seam to Ray (`RayRoles`, `ActorHealth` in accord/loop.py) against a fake
`ray` module: which failure of a call becomes which of the loop's exceptions (the learner lost,
gone for good, a service actor lost, an error raised inside the learner), the wait for a
restarted learner, and the fleet's restart and step counts."""
from __future__ import annotations

import pytest
import ray

from accord import loop as loop_module
from accord.loop import ActorHealth, LearnerGone, LearnerLost, RayRoles, ServiceLost
from learner.algorithm import NonFiniteLossError

DIED = "The actor died unexpectedly before finishing this task."


class Ref:
    """A call's result: its value, or the error `ray.get` raises; `ready` for `ray.wait`."""

    def __init__(self, value=None, error=None, ready=True):
        self.value, self.error, self.ready = value, error, ready


class FakeRay:
    exceptions = ray.exceptions

    def __init__(self):
        self.get_timeouts, self.waits = [], []

    def get(self, ref, timeout=None):
        if isinstance(ref, list):
            return [self.get(r) for r in ref]
        self.get_timeouts.append(timeout)
        assert ref.ready, "waited on a call that has not finished"
        if ref.error is not None:
            raise ref.error
        return ref.value

    def wait(self, refs, num_returns=1, timeout=None):
        self.waits.append((len(refs), num_returns, timeout))
        return [r for r in refs if r.ready], [r for r in refs if not r.ready]


class Handle:
    """`handle.method.remote(*args)` answers `replies[method](*args, **kwargs)` as a Ref (a
    list of replies is answered in turn, one per call)."""

    def __init__(self, **replies):
        self.replies, self.calls = replies, []

    def __getattr__(self, method):
        handle = self

        class Method:
            def remote(self, *args, **kwargs):
                handle.calls.append((method, args, kwargs))
                reply = handle.replies[method]
                if isinstance(reply, list):
                    reply = reply.pop(0)
                return reply if isinstance(reply, Ref) else Ref(reply)
        return Method()


@pytest.fixture
def fake_ray(monkeypatch):
    fake = FakeRay()
    monkeypatch.setattr(loop_module, "ray", fake)
    return fake


def task_error(cause):
    return ray.exceptions.RayTaskError("train", "Traceback (most recent call last): ...", cause)


def test_the_learners_calls_pass_their_arguments_and_results(fake_ray):
    learner = Handle(counters={"updates": 3}, train={"counters": {"updates": 5}}, save="ckpt_5.pt")
    actors = [Handle()]
    roles = RayRoles(learner, [], actors)
    assert roles.health.actors is actors
    assert roles.counters() == {"updates": 3}
    assert roles.train(max_updates=7, max_seconds=0.5) == {"counters": {"updates": 5}}
    assert roles.save("runs/x", 4) == "ckpt_5.pt"
    assert learner.calls == [("counters", (), {}), ("train", (), {"max_updates": 7, "max_seconds": 0.5}),
                             ("save", ("runs/x", 4), {})]


def test_an_error_raised_inside_the_learner_reaches_the_loop_as_itself(fake_ray):
    wrapper = task_error(NonFiniteLossError("10 non-finite losses in a row"))
    roles = RayRoles(Handle(train=Ref(error=wrapper)), [], [])
    with pytest.raises(NonFiniteLossError, match="^10 non-finite losses in a row$") as raised:
        roles.train(1, 1.0)
    assert raised.value.__cause__ is wrapper


def test_an_actor_the_learner_called_dying_is_a_lost_service(fake_ray):
    wrapper = task_error(ray.exceptions.ActorDiedError())
    roles = RayRoles(Handle(train=Ref(error=wrapper)), [], [])
    with pytest.raises(ServiceLost, match=f"^{DIED}$") as raised:
        roles.train(1, 1.0)
    assert raised.value.__cause__ is wrapper


def test_the_learners_own_death_is_a_lost_learner(fake_ray):
    died = ray.exceptions.ActorDiedError()
    roles = RayRoles(Handle(save=Ref(error=died), counters=Ref(error=died)), [], [])
    with pytest.raises(LearnerLost, match=f"^{DIED}$") as raised:
        roles.save("runs/x", 3)
    assert raised.value.__cause__ is died
    with pytest.raises(LearnerLost):
        roles.counters()


def test_a_task_error_whose_cause_is_no_exception_is_raised_as_it_is(fake_ray):
    wrapper = task_error(KeyboardInterrupt())
    roles = RayRoles(Handle(train=Ref(error=wrapper)), [Handle(stats=Ref(error=wrapper))], [])
    with pytest.raises(ray.exceptions.RayTaskError) as raised:
        roles.train(1, 1.0)
    assert raised.value is wrapper
    with pytest.raises(ray.exceptions.RayTaskError):
        roles.service_stats()


class Clock:
    def __init__(self, monkeypatch):
        self.now, self.sleeps = 100.0, []
        monkeypatch.setattr(loop_module.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(loop_module.time, "sleep", self.sleep)

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_restarted_learner_is_waited_for_while_unreachable_and_says_what_it_restored(fake_ray, monkeypatch):
    clock = Clock(monkeypatch)
    unavailable = Ref(error=ray.exceptions.ActorUnavailableError("restarting", None))
    restored = {"checkpoint": "ckpt_8.pt", "updates": 8, "frames": 80}
    roles = RayRoles(Handle(recovery=[unavailable, Ref(error=ray.exceptions.GetTimeoutError("slow")), restored]),
                     [], [])
    assert roles.restarted_learner(timeout=30) == restored
    assert clock.sleeps == [0.5, 0.5]
    assert fake_ray.get_timeouts == [30, 29.5, 29.0]  # what is left of the deadline
    # The same process answering again (it was unreachable, not dead): nothing was restored.
    roles = RayRoles(Handle(recovery=None, counters={"updates": 9, "frames": 90}), [], [])
    assert roles.restarted_learner() == {"checkpoint": None, "updates": 9, "frames": 90}
    assert fake_ray.get_timeouts[-2] == loop_module.LEARNER_RESTART_SECONDS
    # Asked right after a kill, the dying process answers, then is gone: its successor is
    # waited for, and what it restored is returned.
    clock.sleeps.clear()
    dying = Handle(recovery=[None, restored],
                   counters=Ref(error=ray.exceptions.ActorUnavailableError("restarting", None)))
    assert RayRoles(dying, [], []).restarted_learner(timeout=30) == restored
    assert clock.sleeps == [0.5]


def test_a_learner_not_back_in_time_or_dead_for_good_is_gone(fake_ray, monkeypatch):
    clock = Clock(monkeypatch)
    never = Handle(recovery=[Ref(error=ray.exceptions.GetTimeoutError("still waiting"))] * 100)
    with pytest.raises(LearnerGone, match=r"^not back after 3 s \(still waiting\)$"):
        RayRoles(never, [], []).restarted_learner(timeout=3)
    assert clock.sleeps == [0.5] * 6 and fake_ray.get_timeouts[-1] == 1.0  # at least a second each
    clock.sleeps.clear()
    lost = Handle(recovery=[None] * 100, counters=Ref(error=ray.exceptions.ActorUnavailableError("gone", None)))
    with pytest.raises(LearnerGone, match=r"^not back after 3 s \(.*gone"):
        RayRoles(lost, [], []).restarted_learner(timeout=3)
    assert clock.sleeps == [0.5] * 6
    dead = Handle(recovery=Ref(error=ray.exceptions.ActorDiedError()))
    with pytest.raises(LearnerGone, match=f"^{DIED}$") as raised:
        RayRoles(dead, [], []).restarted_learner()
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_service_stats_merge_every_shard_and_a_dead_shard_is_a_lost_service(fake_ray):
    shards = [Handle(stats={"replay/size": 2.0}), Handle(stats={"replay/size": 3.0})]
    assert RayRoles(Handle(), shards, []).service_stats() == {"replay/size": 5.0}
    shards[1].replies["stats"] = Ref(error=ray.exceptions.ActorDiedError())
    with pytest.raises(ServiceLost, match=f"^{DIED}$"):
        RayRoles(Handle(), shards, []).service_stats()
    inside = task_error(ValueError("a bad stat"))
    shards[1].replies["stats"] = Ref(error=inside)
    with pytest.raises(ValueError, match="^a bad stat$"):
        RayRoles(Handle(), shards, []).service_stats()


def test_an_evaluation_is_collected_only_once_finished(fake_ray):
    roles = RayRoles(Handle(), [], [])
    assert not roles.can_evaluate
    evaluator = Handle(evaluate={"eval/success_mean": 0.5})
    roles = RayRoles(Handle(), [], [], evaluator=evaluator)
    assert roles.can_evaluate
    pending = roles.start_evaluation()
    assert roles.evaluation_result(pending, timeout=2.5) == {"eval/success_mean": 0.5}
    assert roles.evaluation_result(Ref(ready=False), timeout=0) is None
    assert fake_ray.waits == [(1, 1, 2.5), (1, 1, 0)]


def stats(incarnation, steps, env_errors=0, weight_fetches=0, weight_fetch_timeouts=0):
    return {"incarnation": incarnation, "steps": steps, "env_errors": env_errors,
            "weight_fetches": weight_fetches, "weight_fetch_timeouts": weight_fetch_timeouts}


def test_actor_health_counts_restarts_unreachable_actors_and_steps_over_incarnations(fake_ray):
    a, b, c = Handle(stats=stats("a1", 10)), Handle(stats=stats("b1", 5, 1, 3, 2)), Handle(stats=stats("c1", 7))
    health = ActorHealth([a, b, c])
    assert health.metrics() == {"actors/restarts": 0, "actors/unreachable": 0, "actors/env_errors": 0,
                                "actors/env_steps": 0, "actors/weight_fetches": 0,
                                "actors/weight_fetch_timeouts": 0}
    health.poll(timeout=3.0)
    assert fake_ray.waits == [(3, 3, 3.0)]
    assert health.metrics() == {"actors/restarts": 0, "actors/unreachable": 0, "actors/env_errors": 1,
                                "actors/env_steps": 22, "actors/weight_fetches": 3,
                                "actors/weight_fetch_timeouts": 2}
    # a is dead for good, b restarted (a new incarnation, counters from 0), c does not answer.
    a.replies["stats"] = Ref(error=ray.exceptions.ActorDiedError())
    b.replies["stats"] = stats("b2", 4)
    c.replies["stats"] = Ref(ready=False)
    health.poll()
    assert fake_ray.waits[-1] == (3, 3, 2.0)
    assert health.metrics() == {"actors/restarts": 1, "actors/unreachable": 2, "actors/env_errors": 1,
                                "actors/env_steps": 10 + 5 + 4 + 7, "actors/weight_fetches": 3,
                                "actors/weight_fetch_timeouts": 2}
    assert not health.all_unreachable
    b.replies["stats"] = stats("b2", 6)  # the same incarnation again: no restart
    health.poll()
    assert health.restarts == 1 and health.steps == 10 + 5 + 6 + 7
    b.replies["stats"] = stats("b3", 1)  # and once more
    health.poll()
    assert health.restarts == 2 and health.steps == 10 + 5 + 6 + 1 + 7
    b.replies["stats"] = Ref(ready=False)
    health.poll()
    assert health.unreachable == 3 and health.all_unreachable


def test_first_line_of_an_error_is_short_and_never_empty():
    assert loop_module._first_line(ValueError("one\ntwo")) == "one"
    assert loop_module._first_line(ValueError("  \n")) == "ValueError"
    assert loop_module._first_line(ValueError("x" * 400)) == "x" * 300


def server_stats(incarnation, restarted=False, batches=4, requests=8, fetches=1):
    return {"incarnation": incarnation, "restarted": restarted, "batches": batches, "requests": requests,
            "weight_fetches": fetches, "version": 0, "largest_batch": 2}


def test_inference_servers_count_each_restarted_process_once_even_before_the_first_poll(fake_ray, monkeypatch):
    from accord import inference_health

    monkeypatch.setattr(inference_health, "ray", fake_ray)
    assert ActorHealth([]).metrics() == {"actors/restarts": 0, "actors/unreachable": 0, "actors/env_errors": 0,
                                         "actors/env_steps": 0, "actors/weight_fetches": 0,
                                         "actors/weight_fetch_timeouts": 0}  # no inference/ keys
    # Server 0 was restarted before the driver first asked; server 1 is its first process.
    s0, s1 = Handle(stats=server_stats("s0b", restarted=True)), Handle(stats=server_stats("s1a"))
    health = ActorHealth([], servers=[s0, s1])
    health.poll(timeout=3.0)
    assert fake_ray.waits[-1][2] == 3.0  # a silent server cannot hold the poll past its timeout
    assert health.metrics()["inference/restarts"] == 1.0
    roles = RayRoles(Handle(), [], [], inference=[s0, s1])
    assert roles.health.servers.servers == [s0, s1]
    health.poll()  # the same process again: no new restart
    s1.replies["stats"] = Ref(ready=False)  # s1 is being restarted
    health.poll()
    assert health.metrics()["inference/restarts"] == 1.0 and health.metrics()["inference/unreachable"] == 1.0
    s1.replies["stats"] = server_stats("s1b", restarted=True, batches=1, requests=1, fetches=1)
    health.poll()
    metrics = health.metrics()
    assert metrics["inference/restarts"] == 2.0 and metrics["inference/unreachable"] == 0.0
    assert metrics["inference/weight_fetches"] == 2.0
    assert metrics["inference/steps_per_batch"] == (8 + 1) / (4 + 1)
    s0.replies["stats"] = Ref(error=ray.exceptions.ActorDiedError())  # restarts used up
    health.poll()
    assert health.metrics()["inference/unreachable"] == 1.0


def test_fleet_news_says_each_restart_each_shrink_and_each_recovery_once(fake_ray):
    a, b = Handle(stats=stats("a1", 1)), Handle(stats=stats("b1", 1))
    health = ActorHealth([a, b])
    health.poll()
    assert health.news() == []
    b.replies["stats"] = Ref(ready=False)  # b's node is gone and no node has room for it
    health.poll()
    assert health.news() == ["the fleet shrinks to 1 of 2 rollout actors: 1 not answering "
                             "(restarting, or no room on a node they may run on); training goes on"]
    health.poll()
    assert health.news() == []  # no change, no line
    b.replies["stats"] = stats("b2", 0)  # restarted elsewhere once a node had room
    health.poll()
    assert health.news() == [
        "1 rollout actor(s) restarted by Ray after their process or node was lost (1 restarts in this run)",
        "the fleet is back to 2 of 2 rollout actors"]
    a.replies["stats"] = Ref(error=ray.exceptions.ActorDiedError())  # a is dead for good
    b.replies["stats"] = stats("b3", 0)  # and b restarted once more
    health.poll()
    assert health.news() == [
        "1 rollout actor(s) restarted by Ray after their process or node was lost (2 restarts in this run)",
        "the fleet shrinks to 1 of 2 rollout actors: 1 not answering (restarting, or no room on a node "
        "they may run on); training goes on"]


def test_a_restart_before_the_first_news_is_news(fake_ray):
    a = Handle(stats=stats("a1", 1))
    health = ActorHealth([a])
    health.poll()
    a.replies["stats"] = stats("a2", 0)
    health.poll()
    assert health.news() == [
        "1 rollout actor(s) restarted by Ray after their process or node was lost (1 restarts in this run)"]


def test_a_fleet_still_starting_is_not_a_dead_one(fake_ray):
    """Actors that have never answered may wait for a node or load their envs for minutes; only
    actors that went silent after answering, or died for good, make a dead fleet."""
    a, b = Handle(stats=Ref(ready=False)), Handle(stats=Ref(ready=False))
    health = ActorHealth([a, b])
    health.poll()
    assert health.unreachable == 2 and not health.all_unreachable
    assert health.news() == []  # a fleet starting up has not shrunk
    a.replies["stats"] = Ref(error=ray.exceptions.ActorDiedError())  # a died for good
    health.poll()
    assert not health.all_unreachable  # b is still starting
    b.replies["stats"] = stats("b1", 3)
    health.poll()
    b.replies["stats"] = Ref(ready=False)  # b answered, then went silent
    health.poll()
    assert health.all_unreachable
