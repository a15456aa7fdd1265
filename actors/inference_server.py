"""The inference actor: the policy of many rollout actors on one device (a GPU share, or a CPU),
one forward per batch of their steps (SEED RL, Sample Factory). A thin Ray wrapper around
`RequestBatcher` (which gathers the steps) and `BatchedPolicy` (which runs them).

Weights: the server, not each rollout actor, fetches a published version from the weight
store, once per version. It learns of one the way rollout actors do with local inference: the
queue's insert replies name the newest version, each actor passes that name along with its
steps, and the server asks the store when a step names a version it has not asked about.
Each reply carries the version that made it, so every unroll records its behaviour weights.

Restarts: Ray restarts a dead server (`actors.inference_max_restarts`) and, with
`max_task_retries`, sends the steps that were in flight again to the new process, which fetches
the newest weights before its first batch; the rollout actors only wait a little longer. A step
is a pure function of its observations, draws and weights, so resending it is harmless.
"""
from __future__ import annotations

import asyncio
import uuid

import numpy as np
import ray
import torch

from actors.batched_policy import BatchedPolicy, StepRequest
from actors.policy import policy_network
from actors.request_batcher import RequestBatcher
from ray_support.actor_restart import restarted_by_ray


@ray.remote(num_cpus=1)
class InferenceActor:
    def __init__(self, cfg, spec, weight_store_name: str, device: str, clients: int, index: int = 0):
        torch.set_num_threads(1)  # one CPU slot; on a GPU the host side only stacks and copies
        self.index, self.device = index, device
        self.weight_store = ray.get_actor(weight_store_name)  # by name: a restart needs no handle
        self.policy = BatchedPolicy(policy_network(cfg, spec), device)
        self.batcher = RequestBatcher(self._run, clients, cfg.actors.inference_max_wait_ms / 1000)
        self.incarnation = uuid.uuid4().hex
        self.restarted = restarted_by_ray()
        self.weight_fetches = 0
        self._asked: set[int] = set()  # versions named by steps since the last fetch

    def __repr__(self) -> str:
        return f"InferenceActor(inference {self.index}, policy on {self.device})"

    async def act(self, obs: np.ndarray, task_ids: np.ndarray, noise: np.ndarray,
                  newest_version: int = -1) -> dict:
        """One rollout actor's step: {actions [M], logits [M, A], version}. `newest_version`:
        the newest version the actor has heard of (-1: none yet)."""
        return await self.batcher.submit((StepRequest(obs, task_ids, noise), newest_version))

    async def ready(self) -> dict:
        """Its stats once it holds weights (the driver publishes before it starts servers; a
        restarted server finds the newest in the store)."""
        await self._await_weights()
        return await self.stats()

    async def _await_weights(self) -> None:
        while self.policy.version < 0:  # no steps from weights the learner never published
            if not await self._fetch():
                await asyncio.sleep(0.05)

    async def _run(self, batch: list) -> list[dict]:
        named = {version for _, version in batch} - {-1, self.policy.version} - self._asked
        if named:
            self._asked |= named
            await self._fetch()
        await self._await_weights()
        # In a thread: steps arriving during the forward gather into the next batch.
        return await asyncio.to_thread(self.policy.forward, [request for request, _ in batch])

    async def _fetch(self) -> bool:
        """Adopt the store's version if it is another than ours; whether it was."""
        reply = await self.weight_store.latest.remote(self.policy.version)
        if reply is None:  # the store holds the version we have
            return False
        version, (ref,) = reply
        self._adopt(version, await ref)
        return True

    def _adopt(self, version: int, weights: dict) -> None:
        self.policy.set_weights(version, weights)
        self.weight_fetches += 1
        self._asked.clear()

    async def stats(self) -> dict:
        return {"incarnation": self.incarnation, "restarted": self.restarted,
                "version": self.policy.version, "weight_fetches": self.weight_fetches,
                **self.batcher.stats()}


def server_of(actor_index: int, num_servers: int) -> int:
    """Round robin: the server that acts for rollout actor `actor_index`."""
    return actor_index % num_servers


def clients_of(server: int, num_actors: int, num_servers: int) -> int:
    """How many rollout actors `server` acts for: a full batch holds a step of each."""
    return sum(server_of(i, num_servers) == server for i in range(num_actors))


def start_inference_servers(cfg, spec, names: list[str], weight_store_name: str, device: str,
                            num_gpus: float) -> list:
    """One server per name, each for the rollout actors `server_of` gives it."""
    servers = []
    for s, name in enumerate(names):
        clients = clients_of(s, cfg.actors.num_actors, len(names))
        servers.append(InferenceActor.options(
            name=name, num_gpus=num_gpus, max_restarts=cfg.actors.inference_max_restarts,
            max_task_retries=-1, max_concurrency=clients + 16,
        ).remote(cfg, spec, weight_store_name, device, clients, s))
    return servers
