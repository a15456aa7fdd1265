from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Array(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TransitionChunk(_message.Message):
    __slots__ = ("sequence", "task_id", "obs", "action", "reward", "next_obs", "terminated", "truncated", "episodes")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OBS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    NEXT_OBS_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    task_id: Array
    obs: Array
    action: Array
    reward: Array
    next_obs: Array
    terminated: Array
    truncated: Array
    episodes: Array
    def __init__(self, sequence: _Optional[int] = ..., task_id: _Optional[_Union[Array, _Mapping]] = ..., obs: _Optional[_Union[Array, _Mapping]] = ..., action: _Optional[_Union[Array, _Mapping]] = ..., reward: _Optional[_Union[Array, _Mapping]] = ..., next_obs: _Optional[_Union[Array, _Mapping]] = ..., terminated: _Optional[_Union[Array, _Mapping]] = ..., truncated: _Optional[_Union[Array, _Mapping]] = ..., episodes: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("sequence", "rows", "stream_rows")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STREAM_ROWS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    rows: int
    stream_rows: int
    def __init__(self, sequence: _Optional[int] = ..., rows: _Optional[int] = ..., stream_rows: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("tasks", "obs_shape", "obs_dtype", "action_dim", "max_message_bytes", "task_one_hot")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    OBS_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OBS_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TASK_ONE_HOT_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedScalarFieldContainer[str]
    obs_shape: _containers.RepeatedScalarFieldContainer[int]
    obs_dtype: str
    action_dim: int
    max_message_bytes: int
    task_one_hot: int
    def __init__(self, tasks: _Optional[_Iterable[str]] = ..., obs_shape: _Optional[_Iterable[int]] = ..., obs_dtype: _Optional[str] = ..., action_dim: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., task_one_hot: _Optional[int] = ...) -> None: ...
