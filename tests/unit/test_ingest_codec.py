"""The ingestion codec on its own: a chunk round-trips into the replay table's arrays, and the
task one-hot of MT-SAC runs is appended by the server, not trusted from the producer."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from envs.spec import EnvSpec
from ingest import ingest_pb2 as pb
from ingest.codec import ChunkError, ChunkSchema, encode_array, encode_chunk
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
    (np.nan, 1.0, 3, 0.0), (1.5, 1.0, 3, 0.0), (-1, 1.0, 3, 0.0), (3, 1.0, 3, 0.0),  # not a task of this run
], ids=["nan return", "inf return", "-inf return", "inf length", "nan length", "negative length",
        "nan task", "fractional task", "negative task", "task past the last"])
def test_episode_rows_that_are_not_episodes_are_refused(row):
    raw = _chunk()
    good = (2, -4.5, 0, np.nan)  # a zero-length episode of the last task, success unknown
    message = encode_chunk(1, *raw.values(), episodes=[good, row])
    with pytest.raises(ChunkError, match=r"^chunk 1: episodes rows must be \(known task id, finite return, "
                                         r"length >= 0, success or NaN\)$"):
        ChunkSchema.of(SPEC_2D, num_tasks=3).decode(message)


def test_an_episodes_array_of_another_dtype_is_refused_by_its_name():
    message = encode_chunk(1, *_chunk().values())
    message.episodes.CopyFrom(encode_array(np.zeros((1, 4)), np.float32))
    with pytest.raises(ChunkError, match=r"^episodes: dtype '<f4', expected '<f8'$"):
        ChunkSchema.of(SPEC_2D, num_tasks=3).decode(message)


def test_episode_rows_of_the_run_pass_as_they_came():
    raw = _chunk()
    rows = [(2, -4.5, 0, np.nan), (0, 7.0, 12, 1.0)]
    chunk = ChunkSchema.of(SPEC_2D, num_tasks=3).decode(encode_chunk(1, *raw.values(), episodes=rows))
    np.testing.assert_array_equal(chunk["episodes"], np.asarray(rows, dtype=np.float64))
    assert chunk["episodes"].dtype == np.float64
    no_episodes = ChunkSchema.of(SPEC_2D, num_tasks=3).decode(encode_chunk(1, *raw.values()))["episodes"]
    assert no_episodes.shape == (0, 4) and no_episodes.dtype == np.float64


def _message(**changes):
    """Chunk 9 of 4 good rows, with some arrays replaced (None: the field left out)."""
    message = encode_chunk(9, *_chunk(4).values())
    for name, array in changes.items():
        if array is None:
            message.ClearField(name)
        else:
            getattr(message, name).CopyFrom(array)
    return message


_NAN_OBS = np.zeros((4, 2))
_NAN_OBS[1, 1] = np.nan


@pytest.mark.parametrize("changes, message", [
    (dict(reward=None), "chunk 9: reward is missing"),
    (dict(reward=encode_array(np.zeros(3), np.float32)), "chunk 9: reward has 3 rows, task_id has 4"),
    (dict(task_id=encode_array([5, 3, -1, 5], np.int64)),
     "chunk 9: unknown task ids [-1, 3, 5]; this run has tasks 0..2"),
    (dict(obs=encode_array(_NAN_OBS, np.float32)), "chunk 9: obs holds NaN or infinity"),
    (dict(next_obs=encode_array(np.full((4, 2), np.inf), np.float32)), "chunk 9: next_obs holds NaN or infinity"),
    (dict(reward=encode_array([0, 0, -np.inf, 0], np.float32)), "chunk 9: reward holds NaN or infinity"),
    (dict(action=encode_array(np.full((4, 2), np.nan), np.float32)), "chunk 9: action holds NaN or infinity"),
    (dict(action=encode_array(np.full((4, 2), 1.01), np.float32)),
     "chunk 9: action outside [-1, 1] (the env rescales [-1, 1] to its own bounds)"),
    (dict(action=encode_array([[0, 0], [0, -1.01], [0, 0], [0, 0]], np.float32)),
     "chunk 9: action outside [-1, 1] (the env rescales [-1, 1] to its own bounds)"),
    (dict(obs=encode_array(np.zeros((4, 2)), np.float64)), "obs: dtype '<f8', expected '<f4'"),
    (dict(obs=encode_array(np.zeros((4, 2, 1)), np.float32)), "obs: shape [4, 2, 1], expected [N, 2]"),
    (dict(obs=encode_array(np.zeros((4, 3)), np.float32)), "obs: shape [4, 3], expected [N, 2]"),
    (dict(reward=encode_array(np.zeros((4, 1)), np.float32)), "reward: shape [4, 1], expected [N]"),
    (dict(reward=pb.Array(dtype="<f4", shape=[-4], data=b"")), "reward: shape [-4], expected [N]"),
    (dict(reward=pb.Array(dtype="<f4", shape=[4], data=b"\0" * 15)), "reward: 15 bytes, shape [4] of <f4 needs 16"),
    (dict(obs=pb.Array(dtype="<f4", shape=[2 ** 40, 2], data=b"\0" * 64)),
     f"obs: 64 bytes, shape [{2 ** 40}, 2] of <f4 needs {2 ** 43}"),
    (dict(terminated=pb.Array(dtype="|b1", shape=[4], data=bytes([0, 1, 2, 1]))),
     "terminated: booleans must be bytes 0 or 1"),
], ids=["missing", "rows differ", "unknown tasks", "nan obs", "inf next_obs", "-inf reward", "nan action",
        "action over 1", "action under -1", "dtype", "ndim", "row shape", "scalar row shape", "negative dim",
        "bytes", "huge dims", "bool byte 2"])
def test_each_refusal_says_what_is_wrong_and_asks_for_invalid_argument(changes, message):
    with pytest.raises(ChunkError) as refused:
        ChunkSchema.of(SPEC_2D, num_tasks=3).decode(_message(**changes))
    assert str(refused.value) == message
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_an_empty_chunk_and_many_unknown_tasks_are_refused_briefly():
    schema = ChunkSchema.of(SPEC_2D, num_tasks=3)
    with pytest.raises(ChunkError, match=r"^chunk 1: holds no transitions$"):
        schema.decode(encode_chunk(1, *_chunk(0).values()))
    many = _chunk(12)
    many["task_id"] = np.arange(3, 15)
    with pytest.raises(ChunkError, match=r"^chunk 2: unknown task ids \[3, 4, 5, 6, 7, 8, 9, 10\]; "):
        schema.decode(encode_chunk(2, *many.values()))


def test_integer_observations_are_not_checked_for_finiteness_and_get_their_one_hot_in_their_dtype():
    spec = EnvSpec(obs_shape=(5,), obs_dtype=np.dtype(np.uint8), action_dim=2)
    schema = ChunkSchema.of(spec, num_tasks=2, task_one_hot=2)
    raw = _chunk(3, tasks=(1, 0))
    obs = np.full((3, 3), 255, np.uint8)
    chunk = schema.decode(encode_chunk(4, raw["task_id"], obs, raw["action"], raw["reward"], obs,
                                       raw["terminated"], raw["truncated"], obs_dtype=np.uint8))
    assert chunk["obs"].dtype == np.uint8
    np.testing.assert_array_equal(chunk["obs"], [[255] * 3 + [0, 1], [255] * 3 + [1, 0], [255] * 3 + [0, 1]])
    assert chunk["action"].dtype == np.float32 and chunk["task_id"].dtype == np.int64


def test_one_episode_may_be_given_as_a_flat_row_and_actions_at_the_bounds_pass():
    raw = _chunk(4)
    raw["action"] = np.asarray([[1.0, -1.0], [0.5, 0.0], [-1.0, 1.0], [0.0, 0.0]])
    chunk = ChunkSchema.of(SPEC_2D, num_tasks=3).decode(encode_chunk(1, *raw.values(), episodes=(1, 3.5, 20, 1.0)))
    np.testing.assert_array_equal(chunk["episodes"], [[1, 3.5, 20, 1.0]])
    np.testing.assert_array_equal(chunk["action"], raw["action"].astype(np.float32))


def test_refusals_of_long_dtypes_and_shapes_stay_short_and_name_every_row_dimension():
    schema = ChunkSchema(num_tasks=3, obs_shape=(2, 3), obs_dtype=np.dtype(np.float32), action_dim=2)
    message = encode_chunk(1, [0], np.zeros((1, 2, 3)), np.zeros((1, 2)), [0.0], np.zeros((1, 2, 3)), [False], [False])
    message.obs.shape[:] = [1, 2, 3, 1, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ChunkError, match=r"^obs: shape \[1, 2, 3, 1, 1, 1, 1, 1\], expected \[N, 2, 3\]$"):
        schema.decode(message)
    message.obs.dtype = "<" + "f" * 30
    with pytest.raises(ChunkError, match=r"^obs: dtype '<fffffffffffffff', expected '<f4'$"):
        schema.decode(message)
