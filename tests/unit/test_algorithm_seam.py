"""The learner/algorithm seam: which algorithm and batch source a config builds, which weights
the actors run from a checkpoint, the non-finite guard's counting, and RNG states that resume
every generator exactly, cached Gaussian draws included."""
from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from accord.config import config_from_dict
from envs import EnvSpec
from learner.algorithm import rng_state, set_rng_state
from learner.registry import build_algorithm, build_source, policy_weights
from learner.impala.learner import ImpalaLearner
from learner.impala.source import UnrollSource
from learner.sac.learner import SacLearner
from learner.sac.source import ReplaySource


def _cfg(algorithm: str, batch_size: int = 7, envs_per_actor: int = 3):
    learner = {"model": "mlp", "algorithm": algorithm, "batch_size": batch_size}
    if algorithm == "sac":
        learner["sac"] = {"hidden": [8]}
    return config_from_dict({
        "env": {"kind": "gym", "tasks": ["a", "b"], "envs_per_actor": envs_per_actor},
        "actors": {"num_actors": 2}, "learner": learner})


def test_the_config_picks_the_algorithm():
    discrete = EnvSpec((4,), np.dtype(np.float32), num_actions=2)
    box = EnvSpec((4,), np.dtype(np.float32), action_dim=2)
    assert type(build_algorithm(_cfg("impala"), discrete, "cpu")) is ImpalaLearner
    assert type(build_algorithm(_cfg("sac"), box, "cpu")) is SacLearner
    odd = SimpleNamespace(learner=SimpleNamespace(algorithm="ppo"))
    with pytest.raises(ValueError, match="unknown learner.algorithm 'ppo'"):
        build_algorithm(odd, discrete, "cpu")


@pytest.mark.parametrize("batch_size,envs_per_actor,unrolls", [(7, 3, 3), (6, 3, 2), (1, 4, 1)])
def test_an_impala_source_asks_for_enough_unrolls_to_fill_a_batch(batch_size, envs_per_actor,
                                                                  unrolls):
    source = build_source(_cfg("impala", batch_size, envs_per_actor), ["shard"])
    assert type(source) is UnrollSource
    assert (source.n, source.shards) == (unrolls, ["shard"])


def test_a_sac_source_reads_the_replay_shards():
    source = build_source(_cfg("sac"), ["s0", "s1"])
    assert type(source) is ReplaySource and source.shards == ["s0", "s1"]
    with pytest.raises(ValueError, match="unknown learner.algorithm 'ppo'"):
        build_source(SimpleNamespace(learner=SimpleNamespace(algorithm="ppo")), [])


def test_actors_run_the_policy_network_of_a_checkpoint():
    state = {"actor": {"w": 1}, "model": {"w": 2}}
    assert policy_weights(_cfg("sac"), state) == {"w": 1}
    assert policy_weights(_cfg("impala"), state) == {"w": 2}


def _draws():
    return (torch.rand(3).tolist(), np.random.standard_normal(3).tolist(),
            [random.gauss(0, 1) for _ in range(3)], np.random.random(), random.random())


def test_rng_state_resumes_every_generator_with_its_cached_gaussian():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    np.random.standard_normal()   # each leaves the second draw of a pair cached
    random.gauss(0, 1)
    state = rng_state()
    assert state["numpy_has_gauss"] == 1 and state["python_gauss_next"] is not None
    expected = _draws()
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    set_rng_state(state)
    assert _draws() == expected


def test_an_rng_state_without_cached_gaussians_resumes_with_none_cached():
    """States saved before the cached draws were recorded have no such keys: nothing cached."""
    np.random.seed(3)
    random.seed(3)
    state = rng_state()
    assert state["numpy_has_gauss"] == 0 and state["python_gauss_next"] is None
    expected = _draws()
    for key in ("numpy_has_gauss", "numpy_cached_gauss", "python_gauss_next"):
        del state[key]
    set_rng_state(state)
    assert _draws() == expected
