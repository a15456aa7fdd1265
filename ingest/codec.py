"""Arrays on the wire, and the checks every chunk passes before it may reach the replay table.

A chunk comes from outside the run, so nothing in it is trusted: each array's dtype must be
exactly the run's (no silent casts: a float64 observation or an int action is refused, not
converted), its shape must be [N, *row shape] with the same N everywhere, its byte count must
match that shape before any array is built (so a huge or negative dimension costs nothing),
floats must be finite (one NaN reward would poison every critic update that samples it), actions
must lie in [-1, 1] (the range the actors exchange, envs/spec.py), booleans must be 0 or 1, and
task ids must name the run's tasks. A chunk that fails any check raises `ChunkError` and nothing
of it is stored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
import numpy as np

from ingest import ingest_pb2 as pb


class ChunkError(ValueError):
    """A chunk refused; `code` is the gRPC status the stream ends with."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message)
        self.code = code


def wire_dtype(dtype) -> str:
    """numpy's little-endian dtype string: '<f4', '<i8', '|b1', '|u1'."""
    return np.dtype(dtype).newbyteorder("<").str


def encode_array(array, dtype) -> pb.Array:
    array = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return pb.Array(dtype=array.dtype.str, shape=list(array.shape), data=array.tobytes())


def encode_chunk(sequence: int, task_id, obs, action, reward, next_obs, terminated, truncated,
                 obs_dtype=np.float32, episodes=None) -> pb.TransitionChunk:
    """A `TransitionChunk` of N transitions in the dtypes the server expects."""
    chunk = pb.TransitionChunk(
        sequence=sequence, task_id=encode_array(task_id, np.int64), obs=encode_array(obs, obs_dtype),
        action=encode_array(action, np.float32), reward=encode_array(reward, np.float32),
        next_obs=encode_array(next_obs, obs_dtype), terminated=encode_array(terminated, bool),
        truncated=encode_array(truncated, bool))
    if episodes is not None and len(episodes):
        chunk.episodes.CopyFrom(encode_array(np.reshape(episodes, (-1, 4)), np.float64))
    return chunk


@dataclass(frozen=True)
class ChunkSchema:
    """What the run accepts: its tasks (ids 0..num_tasks-1) and the spaces of its `EnvSpec`.
    `obs_shape` is the env's own; with `task_one_hot` K > 0 the run's observations carry a
    one-hot of the task id after it (envs/base.py), which `decode` appends, so a producer never
    has to know that convention, and cannot get it wrong."""
    num_tasks: int
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    action_dim: int
    task_one_hot: int = 0

    @classmethod
    def of(cls, spec, num_tasks: int, task_one_hot: int = 0) -> "ChunkSchema":
        obs_shape = tuple(spec.obs_shape)
        if task_one_hot:
            obs_shape = (*obs_shape[:-1], obs_shape[-1] - task_one_hot)
        return cls(num_tasks, obs_shape, np.dtype(spec.obs_dtype), int(spec.action_dim), task_one_hot)

    def fields(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Field -> (dtype, shape of one row)."""
        return {"task_id": (np.dtype(np.int64), ()), "obs": (self.obs_dtype, self.obs_shape),
                "action": (np.dtype(np.float32), (self.action_dim,)),
                "reward": (np.dtype(np.float32), ()), "next_obs": (self.obs_dtype, self.obs_shape),
                "terminated": (np.dtype(bool), ()), "truncated": (np.dtype(bool), ())}

    def decode(self, message: pb.TransitionChunk) -> dict[str, np.ndarray]:
        """The chunk as the replay table's arrays (without `version`), or ChunkError."""
        chunk, rows = {}, None
        for name, (dtype, row_shape) in self.fields().items():
            if not message.HasField(name):
                raise ChunkError(f"chunk {message.sequence}: {name} is missing")
            array = _decode_array(getattr(message, name), name, dtype, row_shape)
            if rows is not None and len(array) != rows:
                raise ChunkError(f"chunk {message.sequence}: {name} has {len(array)} rows, "
                                 f"task_id has {rows}")
            rows = len(array)
            chunk[name] = array
        if rows == 0:
            raise ChunkError(f"chunk {message.sequence}: holds no transitions")
        task_id = chunk["task_id"]
        unknown = np.unique(task_id[(task_id < 0) | (task_id >= self.num_tasks)])
        if unknown.size:
            raise ChunkError(f"chunk {message.sequence}: unknown task ids {unknown[:8].tolist()}; "
                             f"this run has tasks 0..{self.num_tasks - 1}")
        for name in ("obs", "action", "reward", "next_obs"):
            if chunk[name].dtype.kind == "f" and not np.isfinite(chunk[name]).all():
                raise ChunkError(f"chunk {message.sequence}: {name} holds NaN or infinity")
        if np.abs(chunk["action"]).max() > 1.0:
            raise ChunkError(f"chunk {message.sequence}: action outside [-1, 1] (the env rescales "
                             f"[-1, 1] to its own bounds)")
        chunk["episodes"] = self._episodes(message)
        if self.task_one_hot:
            one_hot = np.eye(self.task_one_hot, dtype=self.obs_dtype)[task_id]
            for name in ("obs", "next_obs"):
                chunk[name] = np.concatenate([chunk[name], one_hot], axis=-1)
        return chunk

    def _episodes(self, message: pb.TransitionChunk) -> np.ndarray:
        if not message.HasField("episodes"):
            return np.zeros((0, 4), dtype=np.float64)
        episodes = _decode_array(message.episodes, "episodes", np.dtype(np.float64), (4,))
        task, length = episodes[:, 0], episodes[:, 2]
        if not (np.isfinite(episodes[:, :3]).all() and (task == np.round(task)).all()
                and ((task >= 0) & (task < self.num_tasks)).all() and (length >= 0).all()):
            raise ChunkError(f"chunk {message.sequence}: episodes rows must be (known task id, "
                             f"finite return, length >= 0, success or NaN)")
        return episodes


def _decode_array(array: pb.Array, name: str, dtype: np.dtype, row_shape: tuple[int, ...]) -> np.ndarray:
    want = wire_dtype(dtype)
    if array.dtype != want:
        raise ChunkError(f"{name}: dtype {array.dtype[:16]!r}, expected {want!r}")
    shape = tuple(array.shape)
    if len(shape) != 1 + len(row_shape) or shape[1:] != row_shape or shape[0] < 0:
        raise ChunkError(f"{name}: shape {list(shape)[:8]}, expected [N, {', '.join(map(str, row_shape))}]"
                         .replace(", ]", "]"))
    expected_bytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(array.data) != expected_bytes:
        raise ChunkError(f"{name}: {len(array.data)} bytes, shape {list(shape)} of {want} needs {expected_bytes}")
    values = np.frombuffer(array.data, dtype=want).reshape(shape)
    if dtype == np.dtype(bool) and (values.view(np.uint8) > 1).any():
        raise ChunkError(f"{name}: booleans must be bytes 0 or 1")
    return values.astype(dtype, copy=False)  # native byte order for the table
