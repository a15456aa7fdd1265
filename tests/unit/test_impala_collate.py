"""`collate` joins unrolls along the batch axis, recorded teacher probabilities included."""
from __future__ import annotations

import numpy as np

from learner.impala.source import collate

T, A = 3, 4


def unroll(b: int, first: int, version: int, task: int) -> dict:
    rng = np.random.default_rng(first)
    return {"obs": rng.standard_normal((T + 1, b, 2)).astype(np.float32),
            "actions": rng.integers(0, A, (T, b)), "rewards": rng.standard_normal((T, b)).astype(np.float32),
            "terminated": np.zeros((T, b), bool), "truncated": np.zeros((T, b), bool),
            "behaviour_logits": rng.standard_normal((T, b, A)).astype(np.float32),
            "teacher_probs/distill": rng.dirichlet(np.ones(A), (T, b)).astype(np.float32),
            "task_id": np.full(b, task), "version": version,
            "episodes": np.array([[task, 1.0 * first, 5, np.nan]])}


def test_unrolls_join_along_the_batch_axis_with_their_teacher_probabilities():
    us = [unroll(2, 0, 7, 0), unroll(3, 1, 8, 1)]
    batch = collate(us)
    for key in ("obs", "actions", "rewards", "behaviour_logits", "teacher_probs/distill"):
        np.testing.assert_array_equal(batch[key], np.concatenate([u[key] for u in us], axis=1), err_msg=key)
    assert batch["teacher_probs/distill"].shape == (T, 5, A)
    assert batch["task_id"].tolist() == [0, 0, 1, 1, 1] and batch["versions"].tolist() == [7, 8]
    assert batch["episodes"].shape == (2, 4)
