"""A small Python client of the ingestion server (any gRPC language can use ingest/ingest.proto).

    client = IngestClient.for_run("runs/point-goal-sac-...")   # address and token from RUN_DIR
    spec = client.describe()                                  # tasks, spaces
    rows = client.send(task_ids, obs, action, reward, next_obs, terminated, truncated)

`send` returns once the server has stored the chunk (the acknowledged rows); while the run's
replay holds producers back it simply takes longer. Every chunk travels on one open stream; a
refused chunk raises `grpc.RpcError` with the server's status, and the next `send` opens a new
stream (the chunks acknowledged before stay stored).
"""
from __future__ import annotations

import os
import queue
from pathlib import Path

import grpc
import numpy as np

from ingest import ingest_pb2 as pb
from ingest import ingest_pb2_grpc as pb_grpc
from ingest.codec import encode_chunk

_END = object()


class IngestClient:
    def __init__(self, target: str, token: str, root_certificates: bytes | None = None,
                 max_message_bytes: int = 64 * 1024 * 1024):
        options = [("grpc.max_send_message_length", max_message_bytes)]
        if root_certificates is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates), options=options)
        self.stub = pb_grpc.IngestStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.obs_dtype = None
        self._sequence = 0
        self._outbox: queue.Queue | None = None
        self._acks = None

    @classmethod
    def for_run(cls, run_dir: str | Path, token_env: str = "ACCORD_INGEST_TOKEN", **kwargs) -> "IngestClient":
        """Connect to the server of the run at `run_dir`: RUN_DIR/ingest_address and the token of
        `$token_env`, else RUN_DIR/ingest_token."""
        run_dir = Path(run_dir)
        target = (run_dir / "ingest_address").read_text().strip()
        token = os.environ.get(token_env) or (run_dir / "ingest_token").read_text().strip()
        return cls(target, token, **kwargs)

    def describe(self, timeout: float = 10.0) -> pb.RunSpec:
        spec = self.stub.Describe(pb.DescribeRequest(), metadata=self.metadata, timeout=timeout,
                                  wait_for_ready=True)
        self.obs_dtype = np.dtype(spec.obs_dtype)
        return spec

    def send(self, task_ids, obs, action, reward, next_obs, terminated, truncated,
             episodes=None) -> int:
        """Stream one chunk of N transitions; returns the rows the server stored."""
        if self.obs_dtype is None:
            self.describe()
        self._sequence += 1
        chunk = encode_chunk(self._sequence, task_ids, obs, action, reward, next_obs, terminated,
                             truncated, obs_dtype=self.obs_dtype, episodes=episodes)
        return self.send_message(chunk).rows

    def send_message(self, chunk: pb.TransitionChunk) -> pb.Ack:
        """Stream a prepared chunk message and wait for its Ack."""
        if self._acks is None:
            self._outbox = queue.Queue()
            self._acks = self.stub.Insert(iter(self._outbox.get, _END), metadata=self.metadata)
        self._outbox.put(chunk)
        try:
            return next(self._acks)
        except BaseException:
            self._end_stream()
            raise

    def _end_stream(self) -> None:
        if self._acks is not None:
            self._outbox.put(_END)
            self._acks.cancel()
        self._outbox, self._acks = None, None

    def close(self) -> None:
        """Half-close the stream (the server has acknowledged everything sent) and the channel."""
        if self._acks is not None:
            self._outbox.put(_END)
            for _ in self._acks:  # drains to the server's OK
                pass
            self._outbox, self._acks = None, None
        self.channel.close()

    def __enter__(self) -> "IngestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
