"""The rollout actor: a thin Ray wrapper that runs a `RolloutWorker` in a loop.

Unrolls go to the object store with `ray.put`; this actor owns them, so unrolls still queued
when it dies are lost: the learner skips and counts them. The loop starts in `__init__`, so
when Ray restarts a dead actor (`max_restarts`) the new incarnation resyncs the newest weights
and carries on with no call from the driver.
Pipelining: the next unroll is stepped while the previous insert and the weight-version query
are in flight; a full queue blocks the insert, which is the back-pressure.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import uuid
import warnings

import ray
import torch

from actors.rollout import RolloutWorker


@ray.remote(num_cpus=1)
class RolloutActor:
    def __init__(self, cfg, actor_index: int, spec, queue_name: str,
                 weight_store_name: str):
        torch.set_num_threads(1)  # one actor = one CPU; torch's pool would fight the envs
        # Looked up by name rather than passed as handles: handle arguments live in the object
        # store, and a restart fails if they are gone by then.
        self.queue = ray.get_actor(queue_name)
        self.weight_store = ray.get_actor(weight_store_name)
        # A fresh id per incarnation lets the driver count restarts.
        self.incarnation = uuid.uuid4().hex
        with warnings.catch_warnings():  # Ray 2.60 reads a deprecated property inside it
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        reseed = int.from_bytes(os.urandom(4), "little") if restarted else 0
        self.worker = RolloutWorker(cfg, actor_index, spec, reseed)
        self.unrolls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rollout")
        self._thread.start()

    def _sync_weights(self, timeout: float | None) -> bool:
        reply = ray.get(self.weight_store.latest.remote(self.worker.version), timeout=timeout)
        if reply is None:
            return False
        version, (ref,) = reply
        self.worker.set_weights(version, ray.get(ref))
        return True

    def _loop(self) -> None:
        try:
            # Resync on (re)start: no experience from random weights reaches the learner.
            while not self._stop.is_set() and not self._sync_weights(timeout=None):
                time.sleep(0.05)
            pending_insert, pending_version = None, None
            while not self._stop.is_set():
                unroll = self.worker.unroll()
                ref = ray.put(unroll)
                if pending_insert is not None and not self._wait(pending_insert):
                    return
                pending_insert = self.queue.insert.remote([ref], self.worker.task_id)
                self.unrolls += 1
                if pending_version is not None:
                    reply = ray.get(pending_version)
                    if reply is not None:
                        version, (wref,) = reply
                        self.worker.set_weights(version, ray.get(wref))
                pending_version = self.weight_store.latest.remote(self.worker.version)
        except Exception:
            # A broken loop must not leave an idle actor behind: print the traceback (it reaches
            # the driver's log), then exit so that Ray restarts this actor; the driver counts
            # the new incarnation, and stops the run if no actor is left.
            print(f"rollout actor {self.worker.actor_index} failed:\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
            os._exit(1)

    def _wait(self, ref) -> bool:
        """Wait for an insert (it blocks while the queue is full); False if asked to stop."""
        while not ray.wait([ref], timeout=0.5)[0]:
            if self._stop.is_set():
                return False
        ray.get(ref)
        return True

    def stats(self) -> dict:
        return {"unrolls": self.unrolls, "steps": self.worker.steps, "version": self.worker.version,
                "task_id": self.worker.task_id, "incarnation": self.incarnation,
                "env_errors": self.worker.env_errors, "alive": self._thread.is_alive()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.worker.close()

