"""replay/replay_table.py: per-task rings, wrap-around, balanced task-major sampling (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from replay.replay_table import ReplayTable
from tests.unit.transitions import ACTION_DIM, OBS_SHAPE, row_ids_checked, transition_chunk


def make_table(tasks=(0, 1, 2), capacity=10) -> ReplayTable:
    return ReplayTable(tasks, capacity, OBS_SHAPE, np.float32, ACTION_DIM)


def held_rows(table: ReplayTable, task: int) -> set[int]:
    ring = table._rings[task]
    return set(np.rint(ring.arrays["obs"][:ring.size, 0]).astype(int).tolist())


def test_ring_wraps_and_keeps_the_newest():
    table = make_table(tasks=(0,), capacity=10)
    table.insert(transition_chunk(range(0, 7), [0] * 7))
    assert table.size(0) == 7 and held_rows(table, 0) == set(range(7))
    table.insert(transition_chunk(range(7, 13), [0] * 6))  # wraps: rows 0..2 overwritten
    assert table.size(0) == 10
    assert held_rows(table, 0) == set(range(3, 13))
    table.insert(transition_chunk(range(13, 22), [0] * 9))
    assert held_rows(table, 0) == set(range(12, 22))


def test_chunk_larger_than_capacity_keeps_its_newest_rows():
    table = make_table(tasks=(0,), capacity=4)
    table.insert(transition_chunk(range(2), [0, 0]))
    table.insert(transition_chunk(range(100, 111), [0] * 11))
    assert table.size(0) == 4 and len(table) == 4
    assert held_rows(table, 0) == {107, 108, 109, 110}
    table.insert(transition_chunk([200], [0]))  # and the ring goes on from there
    assert held_rows(table, 0) == {108, 109, 110, 200}


def test_insert_splits_a_mixed_chunk_by_task():
    table = make_table(tasks=(0, 1, 2), capacity=10)
    task_ids = [2, 0, 2, 1, 2]
    table.insert(transition_chunk(range(5), task_ids))
    assert [table.size(t) for t in (0, 1, 2)] == [1, 1, 3]
    assert held_rows(table, 2) == {0, 2, 4} and held_rows(table, 0) == {1}
    assert table.holds_at_least(1) and not table.holds_at_least(2)


def test_sample_is_balanced_task_major_and_aligned():
    tasks = (1, 3, 5)  # a shard's share: task ids need not be 0..K-1
    table = make_table(tasks=tasks, capacity=50)
    rng = np.random.default_rng(0)
    rows, next_row = {}, 0
    for sizes in ([30, 5, 12], [40, 1, 20]):  # unequal amounts per task, and a wrap
        ids = np.concatenate([[t] * s for t, s in zip(tasks, sizes)])
        rng.shuffle(ids)
        chunk_rows = range(next_row, next_row + len(ids))
        table.insert(transition_chunk(chunk_rows, ids))
        rows.update(zip(chunk_rows, ids.tolist()))
        next_row += len(ids)
    batch = table.sample(16, rng)
    assert batch["obs"].shape == (3, 16, *OBS_SHAPE)
    assert batch["action"].shape == (3, 16, ACTION_DIM)
    for key in ("reward", "terminated", "truncated", "version"):
        assert batch[key].shape == (3, 16)
    assert batch["obs"].dtype == np.float32 and batch["terminated"].dtype == bool
    assert batch["version"].dtype == np.int64
    np.testing.assert_array_equal(batch["task_ids"], tasks)
    r = row_ids_checked(batch, rows, tasks)
    held = {t: held_rows(table, t) for t in tasks}
    for k, t in enumerate(tasks):  # only rows still in the ring, not overwritten ones
        assert set(r[k].tolist()) <= held[t]


def test_sample_is_uniform_over_the_filled_part():
    table = make_table(tasks=(0, 1), capacity=8)
    table.insert(transition_chunk(range(13), [0] * 13))  # task 0 wrapped: rows 5..12
    table.insert(transition_chunk(range(100, 104), [1] * 4))  # task 1 partly filled
    batch = table.sample(8000, np.random.default_rng(123))
    for k, held in ((0, range(5, 13)), (1, range(100, 104))):
        ids, counts = np.unique(np.rint(batch["obs"][k, :, 0]).astype(int), return_counts=True)
        assert ids.tolist() == list(held)
        expected = 8000 / len(held)
        # chi-square with len(held)-1 dof; 30 is far beyond its 0.999 quantile for <= 7 dof
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 30.0, (k, counts)


def test_bad_chunks_and_requests_are_refused_by_name():
    table = make_table(tasks=(0, 1), capacity=5)
    chunk = transition_chunk(range(3), [0, 1, 0])
    with pytest.raises(ValueError, match="task ids \\[7\\]"):
        table.insert(transition_chunk(range(2), [0, 7]))
    bad = dict(chunk, action=np.zeros((3, ACTION_DIM + 1), np.float32))
    with pytest.raises(ValueError, match="action has shape"):
        table.insert(bad)
    with pytest.raises(ValueError, match="lacks \\['next_obs'\\]"):
        table.insert({k: v for k, v in chunk.items() if k != "next_obs"})
    assert len(table) == 0  # nothing of a refused chunk is stored
    table.insert(transition_chunk(range(2), [0, 0]))
    with pytest.raises(LookupError, match="tasks \\[1\\] hold no transitions"):
        table.sample(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="capacity_per_task"):
        make_table(capacity=0)


def test_a_sample_of_no_rows_is_refused_by_name():
    table = make_table(tasks=(0,), capacity=5)
    table.insert(transition_chunk(range(2), [0, 0]))
    with pytest.raises(ValueError, match="batch_per_task must be >= 1, got 0"):
        table.sample(0, np.random.default_rng(0))


def test_bad_table_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="^ReplayTable needs at least one task id$"):
        ReplayTable([], 5, OBS_SHAPE, np.float32, ACTION_DIM)
    with pytest.raises(ValueError, match=r"^ReplayTable: duplicate task ids in \[1, 2, 1\]$"):
        ReplayTable([1, 2, 1], 5, OBS_SHAPE, np.float32, ACTION_DIM)
    with pytest.raises(ValueError, match=r"^replay.capacity_per_task must be >= 1, got 0$"):
        ReplayTable([0], 0, OBS_SHAPE, np.float32, ACTION_DIM)
    for action_dim in (None, 0):
        with pytest.raises(ValueError, match=rf"^ReplayTable needs a continuous action space "
                                             rf"\(action_dim >= 1\), got {action_dim}$"):
            ReplayTable([0], 5, OBS_SHAPE, np.float32, action_dim)
    one_row = ReplayTable([0], 1, OBS_SHAPE, np.float32, 1)  # the smallest table is a valid one
    assert one_row.capacity == 1


def test_sampled_fields_keep_their_declared_dtypes():
    table = ReplayTable([0], 4, OBS_SHAPE, np.uint8, ACTION_DIM)  # pixel-like observations
    table.insert(transition_chunk(range(3), [0, 0, 0]))
    batch = table.sample(2, np.random.default_rng(0))
    assert {k: batch[k].dtype for k in ("obs", "next_obs", "action", "reward", "terminated",
                                         "truncated", "version")} == {
        "obs": np.uint8, "next_obs": np.uint8, "action": np.float32, "reward": np.float32,
        "terminated": np.bool_, "truncated": np.bool_, "version": np.int64}
