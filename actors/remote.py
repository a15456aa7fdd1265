"""The rollout actor: a thin Ray wrapper that runs a worker in a loop and inserts what it
produces into the service: IMPALA unrolls (`RolloutWorker`) into the FIFO queue, SAC
transition chunks (`TransitionWorker`) into the replay shards that hold their tasks.

Unrolls go to the object store with `ray.put` and the queue holds references; this actor owns
them, so unrolls still queued when it dies are lost: the learner skips and counts them.
Transition chunks are copied into the replay table, so nothing is lost with the actor.
The loop starts in `__init__`, so when Ray restarts a dead actor (`max_restarts`) the new
incarnation resyncs the newest weights and carries on with no call from the driver.
Weights: every insert reply carries the newest version the learner published, so an actor
fetches weights from the weight store only when they are new, never to ask whether they are.
With `actors.inference: server` the actor holds no policy and fetches no weights: it passes the
newest version it has heard of to its inference server with each step (`ServerPolicy`), and
the server fetches it once for all the actors it serves.
Pipelining: the next unroll (or chunk) is stepped while the previous inserts are in flight; a full queue, or a replay shard's rate limiter, holds the
insert back, which is the back-pressure. A chunk's parts go to all their shards before any
reply is awaited, so one waiting shard never starves another.
"""
from __future__ import annotations

import os
import sys
import threading
import traceback
import uuid

import ray
import torch

from ray_support.actor_restart import restarted_by_ray
from actors.rollout import RolloutWorker
from actors.transitions import TransitionWorker
from actors.weight_fetch import WeightFetcher


# A learner's start until its first publish (its process, torch, its model; on a GPU, CUDA's
# context; a checkpoint to load): seconds, seldom a minute.
FIRST_WEIGHTS_SECONDS = 120.0


class ServerPolicy:
    """A rollout worker's `infer` with `actors.inference: server`: one call per step to the
    inference actor that serves this rollout actor. While Ray restarts that actor the call
    waits (the server is created with `max_task_retries`), so its death costs this actor time,
    not its loop."""

    def __init__(self, server):
        self.server = server
        self.newest_version = -1  # the newest version an insert reply named

    def __call__(self, obs, task_ids, noise) -> dict:
        return ray.get(self.server.act.remote(obs, task_ids, noise, self.newest_version))


def newest_published(replies: list[dict]) -> int:
    """The version the insert replies name (-1: none yet); IMPALA's one queue insert has one."""
    return max((r.get("weights_version", -1) for r in replies), default=-1)


def weights_changed(replies: list[dict], have_version: int) -> bool:
    """Whether an insert reply names another published version than the actor acts with: a
    newer one, or an older one after a learner restart went back to its checkpoint. Either
    way the weight store holds it already (the learner publishes there before the shards)."""
    published = {r.get("weights_version", -1) for r in replies} - {-1}
    return bool(published - {have_version})


class _QueueInserter:
    """IMPALA: `actors.unrolls_per_insert` unroll references per call into one queue shard
    (actor i inserts into shard i mod S)."""

    def __init__(self, names: list[str], actor_index: int, unrolls_per_insert: int):
        self.queue = ray.get_actor(names[actor_index % len(names)])
        self.unrolls_per_insert = unrolls_per_insert

    def produce(self, worker: RolloutWorker) -> list:
        return [ray.put(worker.unroll()) for _ in range(self.unrolls_per_insert)]

    def send(self, refs: list, task_id: int) -> list:
        return [self.queue.insert.remote(refs, task_id)]


class _ReplayInserter:
    """SAC: a chunk of transitions, split by the shard that holds each task."""

    def __init__(self, names: list[str], actor_index: int, unrolls_per_insert: int):
        self.shards = [ray.get_actor(n) for n in names]

    def produce(self, worker: TransitionWorker) -> dict:
        from replay.sharding import split_by_shard

        return split_by_shard(worker.collect(), len(self.shards))

    def send(self, parts: dict, task_id: int) -> list:
        return [self.shards[s].insert.remote(part) for s, part in parts.items()]


@ray.remote(num_cpus=1)
class RolloutActor:
    def __init__(self, cfg, actor_index: int, spec, service_names: list[str],
                 weight_store_name: str, inference_name: str | None = None):
        torch.set_num_threads(1)  # one actor = one CPU; torch's pool would fight the envs
        # Looked up by name rather than passed as handles: handle arguments live in the object
        # store, and a restart fails if they are gone by then.
        sac = cfg.learner.algorithm == "sac"
        self.inserter = (_ReplayInserter if sac else _QueueInserter)(
            service_names, actor_index, cfg.actors.unrolls_per_insert)
        self.weights = WeightFetcher(ray.get_actor(weight_store_name))
        # A fresh id per incarnation lets the driver count restarts.
        self.incarnation = uuid.uuid4().hex
        reseed = int.from_bytes(os.urandom(4), "little") if restarted_by_ray() else 0
        # `inference_name`: the inference server that acts for this actor (IMPALA only).
        self.server_policy = None if inference_name is None else ServerPolicy(ray.get_actor(inference_name))
        if sac:
            self.worker = TransitionWorker(cfg, actor_index, spec, reseed)
        else:
            self.worker = RolloutWorker(cfg, actor_index, spec, reseed, infer=self.server_policy)
        # The repr, which Ray reads once the actor has started, names the version this
        # incarnation starts acting with; so the constructor waits for the learner's first
        # publish (the driver starts the actors while the learner starts; a restarted actor
        # finds the newest weights in the store at once). Should none come in time, the loop
        # below waits on.
        if self.server_policy is None:
            first = self.weights.first(FIRST_WEIGHTS_SECONDS)
            if first is not None:
                self.worker.set_weights(*first)
        self.unrolls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rollout")
        self._thread.start()

    def __repr__(self) -> str:
        # Ray shows this on the dashboard's Actors page and before the actor's log lines; it
        # reads it once, when the actor has started: the version is the one it started with.
        tasks = self.worker.cfg.env.tasks
        names = sorted({tasks[int(t)] for t in self.worker.env.task_ids})
        acting = "inference on a server" if self.server_policy else f"weights v{self.worker.version}"
        return f"RolloutActor(rollout {self.worker.actor_index}, tasks {', '.join(names)}, {acting})"

    def _sync_weights(self) -> None:
        """Act with the store's newest weights (ours stay if they are, or if those did not come
        in time)."""
        newer = self.weights.newer(self.worker.version)
        if newer is not None:
            self.worker.set_weights(*newer)

    def _loop(self) -> None:
        try:
            # No weights yet (none were published while the constructor waited): wait on, so
            # that no experience from random weights reaches the learner.
            if self.server_policy is None and self.worker.version < 0:
                first = self.weights.first(stop=self._stop)
                if first is None:  # asked to stop first
                    return
                self.worker.set_weights(*first)
            pending_insert = []
            while not self._stop.is_set():
                produced = self.inserter.produce(self.worker)
                replies = self._wait(pending_insert)
                if replies is None:
                    return
                if self.server_policy is not None:
                    # Not the max: a restarted learner publishes an older version, and that
                    # is the one the server must go back to.
                    published = newest_published(replies)
                    if published >= 0:
                        self.server_policy.newest_version = published
                elif weights_changed(replies, self.worker.version):
                    self._sync_weights()
                pending_insert = self.inserter.send(produced, self.worker.task_id)
                self.unrolls += len(produced) if isinstance(produced, list) else 1
        except Exception:
            # A broken loop must not leave an idle actor behind: print the traceback (it reaches
            # the driver's log), then exit so that Ray restarts this actor; the driver counts
            # the new incarnation, and stops the run if no actor is left.
            print(f"rollout actor {self.worker.actor_index} failed:\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
            os._exit(1)

    def _wait(self, refs: list) -> list[dict] | None:
        """The replies of the previous inserts (they block while the service is full or the
        rate limiter holds them back); None if asked to stop."""
        while refs and len(ray.wait(refs, num_returns=len(refs), timeout=0.5)[0]) < len(refs):
            if self._stop.is_set():
                return None
        return ray.get(refs)

    def stats(self) -> dict:
        return {"unrolls": self.unrolls, "steps": self.worker.steps, "version": self.worker.version,
                "task_id": self.worker.task_id, "incarnation": self.incarnation,
                "env_errors": self.worker.env_errors, "weight_fetches": self.weights.fetches,
                "weight_fetch_timeouts": self.weights.timeouts, "alive": self._thread.is_alive()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.worker.close()

