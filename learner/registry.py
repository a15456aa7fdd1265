"""Which `Algorithm` and `BatchSource` a config asks for (`learner.algorithm`).

Kept apart from `learner/algorithm.py`, which the learners import for the seam itself: the
learners are imported here, never the other way round.
"""
from __future__ import annotations

from learner.algorithm import Algorithm, BatchSource
from learner.impala.learner import ImpalaLearner
from learner.impala.source import UnrollSource
from learner.sac.learner import SacLearner
from learner.sac.source import ReplaySource


def build_algorithm(cfg, spec, device: str) -> Algorithm:
    if cfg.learner.algorithm == "impala":
        return ImpalaLearner(cfg, spec, device)
    if cfg.learner.algorithm == "sac":
        return SacLearner(cfg, spec, device)
    raise ValueError(f"unknown learner.algorithm {cfg.learner.algorithm!r}")


def build_source(cfg, service: list) -> BatchSource:
    """`service`: the handles of the queue/replay service's shards."""
    if cfg.learner.algorithm == "impala":
        return UnrollSource(service, -(-cfg.learner.batch_size // cfg.env.envs_per_actor))
    if cfg.learner.algorithm == "sac":
        return ReplaySource(service, cfg)
    raise ValueError(f"unknown learner.algorithm {cfg.learner.algorithm!r}")


def policy_weights(cfg, state: dict) -> dict:
    """The weights rollout actors run (`Algorithm.actor_weights()`), from a checkpoint's state."""
    if cfg.learner.algorithm == "sac":
        return state["actor"]
    return state["model"]
