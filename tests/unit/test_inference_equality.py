"""Server inference acts as local inference does: for the same weights, observations and seed,
a rollout worker whose steps go through `BatchedPolicy` (the inference server's forward)
records the same actions, behaviour logits and rewards as one with its own CPU copy, and
leaves its generator in the same state. And an unroll whose weights change mid-way keeps, per
step, the logits of the weights that chose that step's action (what V-trace's mu must be)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accord.config import config_from_dict
from actors.batched_policy import BatchedPolicy, StepRequest
from actors.policy import policy_network
from actors.rollout import RolloutWorker
from actors.sampling import actions_from_noise, sampling_noise
from envs import describe
from tests.support.scripted_env import TASK
from tests.support.weights import random_weights

T, M = 7, 5


def _cfg(per_task_heads: bool = False, tasks=(TASK,)):
    return config_from_dict({
        "env": {"kind": "gym", "tasks": list(tasks), "envs_per_actor": M},
        "actors": {"num_actors": 2, "unroll_length": T, "inference": "server", "inference_device": "cpu"},
        "learner": {"model": "mlp", "batch_size": M, "per_task_heads": per_task_heads},
        "run": {"seed": 3},
    })


def _served(policy: BatchedPolicy):
    return lambda obs, task_ids, noise: policy.forward([StepRequest(obs, task_ids, noise)])[0]


@pytest.mark.parametrize("actor_index,heads", [(0, False), (1, True)])
def test_server_steps_equal_local_steps_for_the_same_weights_and_seed(actor_index, heads):
    cfg = _cfg(per_task_heads=heads, tasks=("CartPole-v1", TASK) if heads else (TASK,))
    spec = describe("gym", TASK)
    local = RolloutWorker(cfg, actor_index, spec)
    weights = random_weights(local.model, seed=11, scale=0.05)
    local.set_weights(4, weights)
    policy = BatchedPolicy(policy_network(cfg, spec))
    policy.set_weights(4, weights)
    served = RolloutWorker(cfg, actor_index, spec, infer=_served(policy))
    assert served.model is None  # a served worker holds no copy of the policy
    for _ in range(3):
        a, b = local.unroll(), served.unroll()
        np.testing.assert_array_equal(a["actions"], b["actions"])
        np.testing.assert_allclose(a["behaviour_logits"], b["behaviour_logits"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(a["rewards"], b["rewards"])
        np.testing.assert_array_equal(a["obs"], b["obs"])
        assert a["version"] == b["version"] == 4
    assert len(np.unique(a["actions"])) > 1  # the draws mattered, not one forced action
    assert torch.equal(local.generator.get_state(), served.generator.get_state())


def test_actions_from_the_draws_are_what_multinomial_draws():
    logits = torch.randn(64, 6, generator=torch.Generator().manual_seed(0)) * 3
    for seed in range(20):
        drawn = torch.multinomial(torch.softmax(logits, -1), 1,
                                  generator=torch.Generator().manual_seed(seed)).squeeze(1)
        noise = sampling_noise(torch.Generator().manual_seed(seed), 64, 6)
        assert torch.equal(actions_from_noise(logits, noise), drawn)


def test_one_batch_of_several_workers_equals_their_separate_forwards():
    cfg = _cfg()
    spec = describe("gym", TASK)
    policy = BatchedPolicy(policy_network(cfg, spec))
    policy.set_weights(2, random_weights(policy.model, seed=5, scale=0.3))
    rng = np.random.default_rng(0)
    requests = [StepRequest(rng.normal(size=(n, 4)).astype(np.float32), np.zeros(n, np.int64),
                            rng.exponential(size=(n, spec.num_actions)).astype(np.float32))
                for n in (5, 1, 3)]
    together = policy.forward(requests)
    for request, reply in zip(requests, together):
        alone = policy.forward([request])[0]
        assert reply["actions"].shape == (len(request.obs),) and reply["version"] == 2
        np.testing.assert_array_equal(reply["actions"], alone["actions"])
        # A matrix product of another batch size may round the last bit another way.
        np.testing.assert_allclose(reply["logits"], alone["logits"], rtol=1e-6, atol=1e-6)


def test_weights_that_change_mid_unroll_keep_each_steps_logits_and_the_oldest_version():
    cfg = _cfg()
    spec = describe("gym", TASK)
    policy = BatchedPolicy(policy_network(cfg, spec))
    old, new = random_weights(policy.model, seed=1), random_weights(policy.model, seed=2)
    policy.set_weights(6, old)
    steps = []

    def switching(obs, task_ids, noise):
        if len(steps) == 3:
            policy.set_weights(7, new)  # the server adopts a new version between two batches
        steps.append(obs.copy())
        return _served(policy)(obs, task_ids, noise)

    u = RolloutWorker(cfg, 0, spec, infer=switching).unroll()
    assert u["version"] == 6  # the older weights: the policy lag is not under-reported
    reference = policy_network(cfg, spec).eval()
    for t, obs in enumerate(steps):
        reference.load_state_dict({k: torch.tensor(v) for k, v in (old if t < 3 else new).items()})
        with torch.no_grad():
            logits, _ = reference(torch.from_numpy(obs), torch.zeros(M, dtype=torch.int64))
        np.testing.assert_allclose(u["behaviour_logits"][t], logits.numpy(), rtol=0, atol=1e-6)
