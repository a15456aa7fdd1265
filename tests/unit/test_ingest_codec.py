"""The ingestion codec on its own: a chunk round-trips into the replay table's arrays, and the
task one-hot of MT-SAC runs is appended by the server, not trusted from the producer."""
from __future__ import annotations

import numpy as np
import pytest

from envs.spec import EnvSpec
from ingest.codec import ChunkError, ChunkSchema, encode_chunk
from replay.replay_table import ReplayTable


def _chunk(n=5, tasks=(0, 1, 2)):
    rng = np.random.default_rng(0)
    return dict(task_id=np.asarray([tasks[i % len(tasks)] for i in range(n)]),
                obs=rng.uniform(-1, 1, (n, 2)), action=rng.uniform(-1, 1, (n, 2)), reward=rng.normal(size=n),
                next_obs=rng.uniform(-1, 1, (n, 2)), terminated=rng.random(n) < 0.5,
                truncated=rng.random(n) < 0.5)


def test_decoded_chunk_has_the_one_hot_of_its_task_and_fits_the_table():
    # The run's spec: 2 env dims + a one-hot over 3 tasks, as envs/base.py builds observations.
    spec = EnvSpec(obs_shape=(5,), obs_dtype=np.dtype(np.float32), action_dim=2)
    schema = ChunkSchema.of(spec, num_tasks=3, task_one_hot=3)
    assert schema.obs_shape == (2,)
    raw = _chunk()
    chunk = schema.decode(encode_chunk(7, raw["task_id"], raw["obs"], raw["action"], raw["reward"],
                                       raw["next_obs"], raw["terminated"], raw["truncated"],
                                       episodes=[(1, 3.5, 20, np.nan)]))
    eye = np.eye(3, dtype=np.float32)[raw["task_id"]]
    np.testing.assert_array_equal(chunk["obs"], np.hstack([raw["obs"].astype(np.float32), eye]))
    np.testing.assert_array_equal(chunk["next_obs"], np.hstack([raw["next_obs"].astype(np.float32), eye]))
    np.testing.assert_array_equal(chunk["reward"], raw["reward"].astype(np.float32))
    np.testing.assert_array_equal(chunk["terminated"], raw["terminated"])
    assert chunk["episodes"].shape == (1, 4) and chunk["episodes"][0, 1] == 3.5
    chunk["version"] = np.zeros(5, dtype=np.int64)
    assert ReplayTable([0, 1, 2], 10, spec.obs_shape, spec.obs_dtype, spec.action_dim).validate(chunk) == 5


def test_big_endian_bytes_are_refused_not_misread():
    spec = EnvSpec(obs_shape=(2,), obs_dtype=np.dtype(np.float32), action_dim=2)
    message = encode_chunk(1, *_chunk().values())
    message.reward.dtype = ">f4"
    with pytest.raises(ChunkError, match="reward: dtype '>f4', expected '<f4'"):
        ChunkSchema.of(spec, num_tasks=3).decode(message)


def test_episode_rows_of_unknown_tasks_are_refused():
    spec = EnvSpec(obs_shape=(2,), obs_dtype=np.dtype(np.float32), action_dim=2)
    raw = _chunk()
    with pytest.raises(ChunkError, match="episodes"):
        ChunkSchema.of(spec, num_tasks=3).decode(encode_chunk(1, *raw.values(), episodes=[(5, 1.0, 3, 0.0)]))


SPEC_2D = EnvSpec(obs_shape=(2,), obs_dtype=np.dtype(np.float32), action_dim=2)


@pytest.mark.parametrize("row", [
    (0, np.nan, 3, 0.0), (0, np.inf, 3, 1.0), (0, -np.inf, 3, 1.0),  # a return that poisons the means
    (0, 1.0, np.inf, 0.0), (0, 1.0, np.nan, 0.0), (0, 1.0, -1, 0.0),  # a length no episode has
    (np.nan, 1.0, 3, 0.0), (1.5, 1.0, 3, 0.0), (-1, 1.0, 3, 0.0),  # not a task of this run
], ids=["nan return", "inf return", "-inf return", "inf length", "nan length", "negative length",
        "nan task", "fractional task", "negative task"])
def test_episode_rows_that_are_not_episodes_are_refused(row):
    raw = _chunk()
    good = (2, -4.5, 0, np.nan)  # a zero-length episode of the last task, success unknown
    message = encode_chunk(1, *raw.values(), episodes=[good, row])
    with pytest.raises(ChunkError, match=r"^chunk 1: episodes rows must be \(known task id, finite return, "
                                         r"length >= 0, success or NaN\)$"):
        ChunkSchema.of(SPEC_2D, num_tasks=3).decode(message)


def test_episode_rows_of_the_run_pass_as_they_came():
    raw = _chunk()
    rows = [(2, -4.5, 0, np.nan), (0, 7.0, 12, 1.0)]
    chunk = ChunkSchema.of(SPEC_2D, num_tasks=3).decode(encode_chunk(1, *raw.values(), episodes=rows))
    np.testing.assert_array_equal(chunk["episodes"], np.asarray(rows, dtype=np.float64))
    assert chunk["episodes"].dtype == np.float64
    no_episodes = ChunkSchema.of(SPEC_2D, num_tasks=3).decode(encode_chunk(1, *raw.values()))["episodes"]
    assert no_episodes.shape == (0, 4) and no_episodes.dtype == np.float64
