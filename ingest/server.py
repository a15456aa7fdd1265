"""The gRPC ingestion server: producers outside Ray stream transitions into a run's replay shards.

It runs in the driver process (grpc's thread pool; each call holds one thread) and speaks the
`accord.ingest.v1.Ingest` service of ingest/ingest.proto. Per call:

1. Authentication: the `authorization: Bearer <token>` header, compared in constant time, before
   anything is read; otherwise UNAUTHENTICATED.
2. Per chunk: parse (garbage bytes: INVALID_ARGUMENT; the handler takes raw bytes so that a bad
   message is answered by us, not by grpc's generic INTERNAL), decode and check against the run's
   spaces and task ids (ingest/codec.py; INVALID_ARGUMENT), then forward to the shards with
   `split_by_shard`, and acknowledge only once every shard has stored its part. A refused chunk
   ends the stream with its status; it was stored nowhere, and the chunks acknowledged before it
   stay stored. Messages over `max_message_bytes` never reach us: grpc answers RESOURCE_EXHAUSTED.

Back-pressure is flow control, not a timeout: a shard's insert waits while its rate limiter says
the producers ran ahead of the learner, the call does not read its next chunk until then, and
HTTP/2 flow control stops the producer once the transport's window is full. A timeout would
answer RESOURCE_EXHAUSTED for a chunk whose insert is still queued at the shard and may yet be
stored, so a producer retrying it would duplicate rows. Calls beyond `max_streams` get
RESOURCE_EXHAUSTED from grpc at once.

Choices made here, where the spec is silent:
- `version` (the weights that chose an action) is not on the wire; rows get the newest version
  the shards reported, so the learner's lag metric reads the external rows as current.
- A shard's part larger than its rate limiter's `max_insert` is sent in pieces of that size (the
  limiter refuses larger inserts, replay/rate_limiter.py), one after the other.
"""
from __future__ import annotations

import hmac
import threading
from collections import Counter
from concurrent import futures
from typing import Callable, Sequence

import grpc
import numpy as np
import ray
from google.protobuf.message import DecodeError

from ingest import ingest_pb2 as pb
from ingest.codec import ChunkError, ChunkSchema
from replay.sharding import split_by_shard

SERVICE = pb.DESCRIPTOR.services_by_name["Ingest"].full_name


class IngestServer:
    """`shards[s]` is a Ray actor handle with `insert.remote(chunk) -> {"weights_version": ...}`
    (replay/replay_service.py), `max_insert[s]` the most rows one insert into it may hold.
    `fetch` waits for a list of insert calls (`ray.get`; tests hand in plain fakes); a shard
    that fails raises a `ray.exceptions.RayError` from it."""

    def __init__(self, schema: ChunkSchema, task_names: Sequence[str], shards: Sequence,
                 max_insert: Sequence[int], token: str, host: str = "127.0.0.1", port: int = 0,
                 max_message_bytes: int = 4 * 1024 * 1024, max_streams: int = 8,
                 tls: tuple[bytes, bytes] | None = None, fetch: Callable[[list], list] = ray.get):
        if not token:
            raise ValueError("the ingestion server needs a non-empty token")
        self.schema, self.task_names = schema, list(task_names)
        self.shards, self.max_insert = list(shards), list(max_insert)
        self._fetch = fetch
        self.max_message_bytes = max_message_bytes
        self._expected = f"Bearer {token}".encode()
        self._lock = threading.Lock()
        self._version = 0
        self.rows = np.zeros(schema.num_tasks, dtype=np.int64)  # acknowledged rows per task
        self.chunks = 0
        self.rejected: Counter[str] = Counter()  # status code name -> calls ended with it
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_streams, thread_name_prefix="ingest"),
            maximum_concurrent_rpcs=max_streams,
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", 1024 * 1024)])
        handlers = {
            # request_deserializer None: the handler gets raw bytes and parses them itself.
            "Insert": grpc.stream_stream_rpc_method_handler(
                self._insert, response_serializer=pb.Ack.SerializeToString),
            "Describe": grpc.unary_unary_rpc_method_handler(
                self._describe, request_deserializer=pb.DescribeRequest.FromString,
                response_serializer=pb.RunSpec.SerializeToString),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = f"{host}:{port}" if ":" not in host else f"[{host.strip('[]')}]:{port}"
        try:
            if tls is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
        except RuntimeError:  # grpc's "Failed to bind": a port in use, an unknown host
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {address} (port in use, or no such address here)")
        self.address = f"{host}:{self.port}"

    def start(self) -> "IngestServer":
        self._server.start()
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Ends open calls after `grace` seconds; an insert waiting on a shard ends with the shard."""
        self._server.stop(grace)

    # --- the RPCs ---

    def _describe(self, request, context) -> pb.RunSpec:
        self._authorize(context)
        s = self.schema
        return pb.RunSpec(tasks=self.task_names, obs_shape=list(s.obs_shape),
                          obs_dtype=s.obs_dtype.newbyteorder("<").str, action_dim=s.action_dim,
                          max_message_bytes=self.max_message_bytes, task_one_hot=s.task_one_hot)

    def _insert(self, requests, context):
        self._authorize(context)
        stream_rows = 0
        for raw in requests:
            try:
                message = pb.TransitionChunk.FromString(raw)
            except DecodeError as exc:
                self._abort(context, ChunkError(f"not a TransitionChunk message ({exc})"))
            try:
                chunk = self.schema.decode(message)
            except ChunkError as exc:
                self._abort(context, exc)
            try:
                rows = self._store(chunk)
            except ray.exceptions.RayError as exc:
                # A shard died (the run is ending) or failed: some shards may hold their part.
                self._abort(context, ChunkError(f"the replay service could not store chunk "
                                                f"{message.sequence} ({type(exc).__name__}); it may "
                                                f"be partly stored", grpc.StatusCode.UNAVAILABLE))
            stream_rows += rows
            yield pb.Ack(sequence=message.sequence, rows=rows, stream_rows=stream_rows)

    # --- plumbing ---

    def _authorize(self, context) -> None:
        sent = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(sent.encode(), self._expected):
            self._abort(context, ChunkError("missing or wrong bearer token (metadata authorization: "
                                            "Bearer <token>)", grpc.StatusCode.UNAUTHENTICATED))

    def _abort(self, context, error: ChunkError):
        with self._lock:
            self.rejected[error.code.name] += 1
        context.abort(error.code, str(error))  # raises: the call ends here

    def _store(self, chunk: dict) -> int:
        """Insert a checked chunk into its shards (every shard's first piece before any wait, as
        replay/sharding.py asks); returns its rows once all are stored."""
        n = len(chunk["task_id"])
        chunk["version"] = np.full(n, self._version, dtype=np.int64)
        pieces = {s: _pieces(part, self.max_insert[s])
                  for s, part in split_by_shard(chunk, len(self.shards)).items()}
        while pieces:
            refs = [self.shards[s].insert.remote(queue.pop(0)) for s, queue in pieces.items()]
            pieces = {s: queue for s, queue in pieces.items() if queue}
            replies = self._fetch(refs)
            with self._lock:
                self._version = max([self._version, *(r.get("weights_version", -1) for r in replies)])
        with self._lock:
            self.rows += np.bincount(chunk["task_id"], minlength=self.schema.num_tasks)
            self.chunks += 1
        return n

    def metrics(self) -> dict[str, float]:
        """Counters for the run's metric rows: rows and chunks stored, calls refused by status."""
        with self._lock:
            out = {"ingest/rows": float(self.rows.sum()), "ingest/chunks": float(self.chunks)}
            out.update({f"ingest/rows/{name}": float(r) for name, r in zip(self.task_names, self.rows)})
            out.update({f"ingest/rejected/{code}": float(n) for code, n in self.rejected.items()})
            out["ingest/rejected"] = float(sum(self.rejected.values()))
        return out


def _pieces(part: dict, max_rows: int) -> list[dict]:
    """`part` in pieces of at most `max_rows` rows; its ended episodes ride with the first."""
    n = len(part["task_id"])
    if n <= max_rows:
        return [part]
    out = []
    for start in range(0, n, max_rows):
        piece = {k: v[start:start + max_rows] for k, v in part.items() if k != "episodes"}
        piece["episodes"] = part["episodes"] if start == 0 else np.zeros((0, 4), dtype=np.float64)
        out.append(piece)
    return out
