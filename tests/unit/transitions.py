"""Transition chunks whose every field encodes a row id r, so a sampled row shows whether its
fields stayed aligned (obs, action, reward, next_obs, flags and version all derive from r)."""
from __future__ import annotations

import numpy as np

OBS_SHAPE = (3,)
ACTION_DIM = 2


def transition_chunk(row_ids, task_ids, episodes=None) -> dict:
    r = np.asarray(row_ids, dtype=np.int64)
    base = r.astype(np.float32)[:, None]
    return {
        "obs": base + np.arange(OBS_SHAPE[0], dtype=np.float32) * 0.25,
        "action": -base + np.arange(ACTION_DIM, dtype=np.float32) * 0.5,
        "reward": 10.0 * r.astype(np.float32),
        "next_obs": base + 1.0 + np.arange(OBS_SHAPE[0], dtype=np.float32) * 0.25,
        "terminated": r % 3 == 0,
        "truncated": r % 5 == 0,
        "version": r * 7,
        "task_id": np.asarray(task_ids, dtype=np.int64),
        "episodes": np.zeros((0, 4)) if episodes is None else np.asarray(episodes, dtype=np.float64),
    }


def row_ids_checked(batch: dict, rows: dict, task_order) -> np.ndarray:
    """Row ids of a [K, n] batch, asserting every field of every row matches the row it names,
    that the row was inserted (`rows`: row id -> task id) and belongs to task `task_order[k]`
    at index k."""
    r = np.rint(batch["obs"][..., 0]).astype(np.int64)
    expected = transition_chunk(r.reshape(-1), np.zeros(r.size))
    for key in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        got = batch[key].reshape(r.size, *batch[key].shape[2:])
        np.testing.assert_array_equal(got, expected[key], err_msg=f"{key} misaligned with obs")
    versions = batch["versions"] if "versions" in batch else batch["version"]
    np.testing.assert_array_equal(np.asarray(versions).reshape(-1), expected["version"])
    never_inserted = sorted(set(r.reshape(-1).tolist()) - rows.keys())
    assert not never_inserted, f"rows {never_inserted[:5]} were never inserted"
    for k, task in enumerate(task_order):
        tasks = {rows[int(i)] for i in r[k]}
        assert tasks == {task}, f"index {k} holds rows of tasks {tasks}, expected {task}"
    return r
