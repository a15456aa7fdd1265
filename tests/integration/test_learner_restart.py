"""A learner killed mid-run on real Ray (CartPole, the queue service, two rollout actors): Ray
restarts it from the newest checkpoint of the run directory, behind the version the actors act
with, and its publish of the restored weights is what resyncs them: every actor's next unroll
carries the restored version. The learner publishes only when told to here (publish_every is
out of reach), so no other publish can move the actors."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from accord.config import load_config
from accord.driver import start_topology
from accord.loop import RayRoles

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _versions_and_unrolls(actors) -> list[tuple[int, int]]:
    return [(s["version"], s["unrolls"]) for s in ray.get([a.stats.remote() for a in actors])]


def _train_until(learner, condition, what: str, timeout: float = 300.0):
    """Train a little at a time (the actors wait on a full queue otherwise) until `condition()`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        ray.get(learner.train.remote(max_updates=1, max_seconds=2.0))
    return value


def _until_the_killed_process_stops_answering(learner, timeout: float = 60.0) -> None:
    """`ray.kill` returns before the process is gone, and a call made at once may still be
    answered by it. The loop asks for the restarted learner only after a call found the process
    lost (`LearnerLost`); wait for the same here: a call that fails with the process, or one that
    the new process already answers (its `recovery` is set)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ray.get(learner.recovery.remote(), timeout=5.0) is not None:
                return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):  # as the loop's LearnerLost
            return
        time.sleep(0.05)
    raise AssertionError(f"the killed learner still answered after {timeout:.0f} s")


def test_after_a_learner_restart_every_actor_acts_with_the_restored_weights(local_ray, tmp_path):
    cfg = load_config(REPO / "configs" / "cartpole.yaml",
                      ["learner.publish_every=1000000", "learner.max_restarts=1"])
    topo = start_topology(cfg, f"restart-{time.time_ns()}", run_dir=tmp_path)
    try:
        learner = topo.learner
        _train_until(learner, lambda: ray.get(learner.counters.remote())["updates"] >= 4, "4 updates")
        checkpoint = ray.get(learner.save.remote(str(tmp_path), 3))
        saved_at = ray.get(learner.counters.remote())["updates"]
        _train_until(learner, lambda: ray.get(learner.counters.remote())["updates"] >= saved_at + 4,
                     "4 more updates")
        newer = ray.get(learner.publish.remote())
        assert newer > saved_at
        _train_until(learner, lambda: all(v == newer for v, _ in _versions_and_unrolls(topo.actors)),
                     f"every actor on version {newer}")

        ray.kill(learner, no_restart=False)  # Ray restarts it (learner.max_restarts=1)
        _until_the_killed_process_stops_answering(learner)
        recovered = RayRoles(learner, topo.service, topo.actors).restarted_learner(timeout=300)
        assert recovered["checkpoint"] == checkpoint and recovered["updates"] == saved_at
        assert ray.get(topo.weight_store.current_version.remote()) == saved_at

        # Each actor hears of the restored version in an insert reply, fetches it between two
        # unrolls, and its next unroll is made with it (its `unrolls` grows on that version).
        adopted: dict[int, int] = {}  # actor -> its unrolls when first seen on the restored version

        def every_actor_unrolled_with_the_restored_version() -> bool:
            for i, (version, unrolls) in enumerate(_versions_and_unrolls(topo.actors)):
                if version == saved_at:
                    adopted.setdefault(i, unrolls)
                else:
                    assert i not in adopted, f"actor {i} left the restored version for {version}"
            return len(adopted) == len(topo.actors) and all(
                unrolls > adopted[i] for i, (_, unrolls) in enumerate(_versions_and_unrolls(topo.actors)))

        _train_until(learner, every_actor_unrolled_with_the_restored_version,
                     f"an unroll of every actor on the restored version {saved_at}", timeout=180)
    finally:
        topo.stop()
