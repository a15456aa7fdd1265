"""Case (c) of `accord bench combiners`: the real `ImpalaLearner.update` with paper 001's four
self-supervised auxiliary terms on the Nature CNN, per combiner (plain summed update, cosine
gating every 1 and every 8, OL-AUX from per-term gradients and from forward-mode dot products).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from accord.config import config_from_dict
from envs.spec import EnvSpec

ATARI_SPEC = EnvSpec((4, 84, 84), np.dtype(np.uint8), num_actions=4)
SELF_SUPERVISED = ("inverse_dynamics", "forward_dynamics", "reward", "autoencoder")


def impala_config(T: int, B: int, combiner: str, options: dict | None = None,
                  strategy: str = "batched", bf16: bool = False):
    return config_from_dict({
        "env": {"kind": "atari", "tasks": ["breakout"]},
        "actors": {"unroll_length": T},
        # No lr decay: every learner steps with the same lr however long the run.
        "learner": {"model": "nature", "batch_size": B, "lr_decay": False, "bf16": bf16,
                    "aux": {name: {} for name in SELF_SUPERVISED},
                    "combiner": {"name": combiner, "options": options or {},
                                 "strategy": strategy}},
    })


def atari_batch(T: int, B: int, seed: int = 0) -> dict:
    """One collated batch of B Breakout-shaped unrolls of T steps (random frames and actions)."""
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.integers(0, 256, (T + 1, B, *ATARI_SPEC.obs_shape), dtype=np.uint8),
        "actions": rng.integers(0, ATARI_SPEC.num_actions, (T, B)).astype(np.int64),
        "rewards": rng.choice(np.float32([-1, 0, 1]), (T, B)),
        "terminated": rng.random((T, B)) < 0.05,
        "truncated": np.zeros((T, B), bool),
        "behaviour_logits": rng.standard_normal((T, B, ATARI_SPEC.num_actions)).astype(np.float32),
        "task_id": np.zeros(B, np.int64),
    }


def impala_case(T: int, B: int, device: str, seed: int = 0):
    """(name, learner) per method: separate learners, identical initial weights."""
    from learner.impala.learner import ImpalaLearner

    methods = [("plain", "sum", {}, "batched", False),
               ("cosine_gate every=1", "cosine_gate", {"every": 1}, "batched", False),
               ("cosine_gate every=8", "cosine_gate", {"every": 8}, "batched", False),
               ("olaux", "olaux", {}, "batched", False),
               ("olaux forward", "olaux", {}, "forward", False),   # dot products by forward mode
               ("plain, bf16", "sum", {}, "batched", True)]          # learner.bf16
    learners = []
    for name, combiner, options, strategy, bf16 in methods:
        torch.manual_seed(seed)
        config = impala_config(T, B, combiner, options, strategy, bf16)
        learners.append((name, ImpalaLearner(config, ATARI_SPEC, device=device)))
    return learners


def _learner_steps(learners, batch: dict) -> list[tuple[str, Callable[[], object]]]:
    return [(name, lambda learner=learner: learner.update(batch)) for name, learner in learners]


def _check_no_skipped_steps(learners) -> None:
    """A skipped (non-finite) update costs less than a real one and would flatter its method."""
    skipped = {name: learner.nonfinite_total for name, learner in learners
               if learner.nonfinite_total}
    if skipped:
        raise RuntimeError(f"non-finite updates were skipped, so their times are not comparable: "
                           f"{skipped}")
