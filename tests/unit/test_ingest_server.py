"""The gRPC ingestion server with fake replay shards (no Ray): a real gRPC server on 127.0.0.1 and
real calls, the shards' inserts and replies scripted. What reaches the shards (versions stamped,
pieces of at most `max_insert` rows, ended episodes sent once), what a failed shard answers, and
the counters. The same server in front of real shards on real Ray:
tests/integration/test_grpc_ingest_hostile.py and test_grpc_ingest_shard_killed.py."""
from __future__ import annotations

import socket
import threading

import grpc
import numpy as np
import pytest
import ray

from envs.spec import EnvSpec
from ingest import ingest_pb2 as pb
from ingest.client import IngestClient
from ingest.codec import ChunkSchema
from ingest.server import SERVICE, IngestServer

TOKEN = "t0ken"
SPEC = EnvSpec(obs_shape=(2,), obs_dtype=np.dtype(np.float32), action_dim=2)


class FakeShard:
    """`insert.remote(chunk)` records the chunk and returns it as the reference; the server's
    `fetch` of the references answers with this shard's `version`, or fails when `failing`."""

    def __init__(self, index, log, version=-1):
        self.index, self.log, self.version = index, log, version
        self.failing = False
        self.chunks = []
        self.insert = self  # shard.insert.remote(...)

    def remote(self, chunk):
        self.chunks.append(chunk)
        self.log.append(("insert", self.index))
        return self


def fetch_from(log, threads=None):
    def fetch(refs):
        if threads is not None:
            threads.append(threading.current_thread().name)
        log.append(("wait", len(refs)))
        if any(shard.failing for shard in refs):
            raise ray.exceptions.RayActorError()
        # A shard's version None: a reply that names none.
        return [{} if shard.version is None else {"weights_version": shard.version} for shard in refs]
    return fetch


@pytest.fixture
def served():
    """Two shards (tasks {0, 2} and {1}), 4 rows per insert, and a started server."""
    log = []
    shards = [FakeShard(0, log), FakeShard(1, log)]
    server = IngestServer(ChunkSchema.of(SPEC, 3), ["a", "b", "c"], shards, [4, 4], TOKEN,
                          max_streams=2, fetch=fetch_from(log)).start()
    yield server, shards, log
    server.stop(0)


def rows(n, first=0, tasks=(0, 1, 2)):
    """n transitions; row i has reward first + i, so every row is known by its reward."""
    task_ids = np.asarray([tasks[i % len(tasks)] for i in range(n)], dtype=np.int64)
    reward = np.arange(first, first + n, dtype=np.float32)
    return dict(task_ids=task_ids, obs=np.tile(reward[:, None], (1, 2)) / 100, action=np.zeros((n, 2), np.float32),
                reward=reward, next_obs=np.zeros((n, 2), np.float32), terminated=np.zeros(n, bool),
                truncated=np.zeros(n, bool))


def stored(shard, field="reward"):
    return np.concatenate([c[field] for c in shard.chunks]) if shard.chunks else np.zeros(0)


def test_rows_carry_the_newest_version_any_shard_reported(served):
    server, shards, _ = served
    shards[0].version = shards[1].version = None  # replies that name no version
    with IngestClient(server.address, TOKEN) as client:
        assert client.send(**rows(3)) == 3  # nothing reported yet: version 0
        assert client.send(**rows(3, first=3)) == 3  # still nothing
        shards[0].version, shards[1].version = 3, 7
        assert client.send(**rows(3, first=6)) == 3
        shards[1].version = 5  # a shard that heard of an older version does not lower it
        assert client.send(**rows(3, first=9)) == 3
        shards[0].version = shards[1].version = None  # nor does a reply without one
        assert client.send(**rows(3, first=12)) == 3
        assert client.send(**rows(3, first=15)) == 3
    versions = {int(r): int(v) for s in shards for c in s.chunks for r, v in zip(c["reward"], c["version"])}
    assert versions == {**{r: 0 for r in range(9)}, **{r: 7 for r in range(9, 18)}}
    assert all(c["version"].dtype == np.int64 for s in shards for c in s.chunks)


def test_a_part_over_max_insert_goes_in_pieces_in_order_with_its_episodes_in_the_first(served):
    server, shards, log = served
    episodes = [(0, 1.5, 10, np.nan), (1, 2.5, 20, 1.0), (2, 3.5, 30, 0.0)]
    with IngestClient(server.address, TOKEN) as client:
        assert client.send(**rows(15), episodes=episodes) == 15
    # Shard 0 holds tasks 0 and 2 (10 rows: pieces of 4, 4, 2), shard 1 task 1 (5 rows: 4, 1).
    assert [len(c["reward"]) for c in shards[0].chunks] == [4, 4, 2]
    assert [len(c["reward"]) for c in shards[1].chunks] == [4, 1]
    np.testing.assert_array_equal(stored(shards[0]), [r for r in range(15) if r % 3 != 1])
    np.testing.assert_array_equal(stored(shards[1]), [r for r in range(15) if r % 3 == 1])
    np.testing.assert_array_equal(stored(shards[0], "task_id"), [r % 3 for r in range(15) if r % 3 != 1])
    # Each episode reaches its task's shard once, with the first piece.
    np.testing.assert_array_equal(shards[0].chunks[0]["episodes"], np.asarray(episodes)[[0, 2]])
    np.testing.assert_array_equal(shards[1].chunks[0]["episodes"], np.asarray(episodes)[[1]])
    assert all(c["episodes"].shape == (0, 4) for s in shards for c in s.chunks[1:])
    # Every shard's next piece is sent before the server waits on any.
    assert log == [("insert", 0), ("insert", 1), ("wait", 2), ("insert", 0), ("insert", 1), ("wait", 2),
                   ("insert", 0), ("wait", 1)]
    assert server.metrics()["ingest/rows"] == 15 and server.metrics()["ingest/chunks"] == 1


def test_a_failed_shard_ends_the_stream_unavailable_and_the_acknowledged_rows_stay_counted(served):
    server, shards, _ = served
    client = IngestClient(server.address, TOKEN)
    acks = [client.send_message(_message(client, rows(3))) for _ in range(2)]
    assert [(a.sequence, a.rows, a.stream_rows) for a in acks] == [(1, 3, 3), (2, 3, 6)]
    shards[1].failing = True
    with pytest.raises(grpc.RpcError) as failed:
        client.send(**rows(3, first=100))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == ("the replay service could not store chunk 3 (RayActorError); "
                                      "it may be partly stored")
    client.close()
    metrics = server.metrics()
    assert metrics["ingest/rows"] == 6 and metrics["ingest/chunks"] == 2
    assert [metrics[f"ingest/rows/{n}"] for n in "abc"] == [2.0, 2.0, 2.0]
    assert metrics["ingest/rejected/UNAVAILABLE"] == 1 and metrics["ingest/rejected"] == 1


def _message(client, chunk):
    from ingest.codec import encode_chunk
    client._sequence += 1
    return encode_chunk(client._sequence, chunk["task_ids"], chunk["obs"], chunk["action"], chunk["reward"],
                        chunk["next_obs"], chunk["terminated"], chunk["truncated"])


def _code(call, details=False) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}" if details else exc.code().name
    return "OK"


def test_rows_are_counted_per_task_also_when_a_chunk_holds_only_some_tasks(served):
    server, _, _ = served
    with IngestClient(server.address, TOKEN) as client:
        client.send(**rows(4, tasks=(0,)))
        client.send(**rows(2, tasks=(1,)))
    metrics = server.metrics()
    assert [metrics[f"ingest/rows/{n}"] for n in "abc"] == [4.0, 2.0, 0.0] and metrics["ingest/chunks"] == 2


def test_calls_run_on_the_servers_own_named_threads():
    """So that a stack dump of the driver tells the ingestion calls apart (py-spy, faulthandler)."""
    threads = []
    server = IngestServer(ChunkSchema.of(SPEC, 3), ["a", "b", "c"], [FakeShard(0, [])], [100], TOKEN,
                          fetch=fetch_from([], threads)).start()
    try:
        with IngestClient(server.address, TOKEN) as client:
            client.send(**rows(3))
    finally:
        server.stop(0)
    assert len(threads) == 1 and threads[0].startswith("ingest_")


def test_refused_calls_get_their_status_store_nothing_and_are_counted(served):
    server, shards, _ = served
    bad_task = rows(3)
    bad_task["task_ids"] = np.asarray([0, 3, 1])
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.stream_stream(f"/{SERVICE}/Insert", request_serializer=lambda b: b,
                                    response_deserializer=pb.Ack.FromString)
        garbage = _code(lambda: list(raw(iter([b"\xff\xfe not a chunk"]), timeout=10,
                                         metadata=(("authorization", f"Bearer {TOKEN}"),))), details=True)
    assert garbage.startswith("INVALID_ARGUMENT: not a TransitionChunk message (Error parsing message")
    assert _code(lambda: IngestClient(server.address, TOKEN).send(**bad_task)) == "INVALID_ARGUMENT"
    assert _code(lambda: IngestClient(server.address, "wrong").send(**rows(3)), details=True) == (
        "UNAUTHENTICATED: missing or wrong bearer token (metadata authorization: Bearer <token>)")
    no_token = IngestClient(server.address, TOKEN)
    no_token.metadata = ()
    assert _code(lambda: no_token.describe()) == "UNAUTHENTICATED"
    assert shards[0].chunks == [] and shards[1].chunks == []
    metrics = server.metrics()
    assert metrics["ingest/rejected/INVALID_ARGUMENT"] == 2 and metrics["ingest/rejected/UNAUTHENTICATED"] == 2
    assert metrics["ingest/rejected"] == 4 and metrics["ingest/rows"] == 0 and metrics["ingest/chunks"] == 0


def test_describe_tells_a_producer_the_run_it_feeds():
    schema = ChunkSchema.of(EnvSpec(obs_shape=(5,), obs_dtype=np.dtype(np.uint8), action_dim=3), 2,
                            task_one_hot=2)
    server = IngestServer(schema, ["reach", "push"], [], [], TOKEN, max_message_bytes=1234).start()
    try:
        spec = IngestClient(server.address, TOKEN).describe()
    finally:
        server.stop(0)
    assert list(spec.tasks) == ["reach", "push"] and list(spec.obs_shape) == [3]
    assert spec.obs_dtype == "|u1" and spec.action_dim == 3
    assert spec.max_message_bytes == 1234 and spec.task_one_hot == 2


def test_a_server_needs_a_token_and_a_free_address():
    schema = ChunkSchema.of(SPEC, 3)
    with pytest.raises(ValueError, match="^the ingestion server needs a non-empty token$"):
        IngestServer(schema, ["a", "b", "c"], [], [], "")
    server = IngestServer(schema, ["a", "b", "c"], [], [], TOKEN)
    server.stop(0)
    assert server.address == f"127.0.0.1:{server.port}" and server.port > 0
    # A port a plain socket holds (grpc's own sockets share ports with SO_REUSEPORT).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(OSError, match=rf"^cannot listen on 127\.0\.0\.1:{port} \(port in use"):
            IngestServer(schema, ["a", "b", "c"], [], [], TOKEN, port=port)
