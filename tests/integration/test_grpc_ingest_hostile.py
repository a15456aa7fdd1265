"""The gRPC ingestion server against malformed and hostile input: real Ray on loopback, a real
gRPC server on 127.0.0.1 in front of two real replay shards (ReplayService + ReplayTable in Ray
actors that can also hand back their table's rows), real gRPC calls.

Every hostile call must end with its exact status code, the server must keep answering, and at
the end the tables must hold exactly the rows that were acknowledged, in order: nothing refused
stored, nothing acknowledged lost."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import ray

from ingest import ingest_pb2 as pb
from ingest.client import IngestClient
from ingest.codec import ChunkSchema, encode_array, encode_chunk
from ingest.server import SERVICE, IngestServer
from tests.support.ingest_rows import killed_rows
from tests.support.inspectable_shard import SPEC, InspectableShard

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

TOKEN = "s3cret-token"
NUM_TASKS = 3  # two shards: tasks {0, 2} and {1}
MAX_MESSAGE = 64 * 1024


def _rows(n, tasks, rng, offset=0.0):
    task_ids = np.asarray([tasks[i % len(tasks)] for i in range(n)], dtype=np.int64)
    return dict(task_ids=task_ids, obs=rng.uniform(-1, 1, (n, 2)).astype(np.float32) + offset,
                action=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                reward=rng.normal(size=n).astype(np.float32),
                next_obs=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                terminated=rng.random(n) < 0.1, truncated=rng.random(n) < 0.1)


def _message(seq, rows):
    return encode_chunk(seq, rows["task_ids"], rows["obs"], rows["action"], rows["reward"],
                        rows["next_obs"], rows["terminated"], rows["truncated"])


@pytest.fixture(scope="module")
def ingest(local_ray):
    shards = [InspectableShard.remote([0, 2]), InspectableShard.remote([1])]
    server = IngestServer(ChunkSchema.of(SPEC, NUM_TASKS), ["a", "b", "c"], shards, [16, 16], TOKEN,
                          max_message_bytes=MAX_MESSAGE, max_streams=3).start()
    yield server, shards
    server.stop(0)


def _code(call) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


KILLED_PRODUCER = """
import sys, time
from ingest.client import IngestClient
from tests.support.ingest_rows import killed_rows
client = IngestClient(sys.argv[1], sys.argv[2])
for k in range(2):
    print(client.send(**killed_rows(k)), flush=True)
time.sleep(60)  # killed here, its stream still open
"""


def _raw_insert(address, payloads, token=TOKEN):
    """Insert with bytes we choose (garbage, cut messages), bypassing the client's encoding."""
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(f"/{SERVICE}/Insert", request_serializer=lambda b: b,
                                     response_deserializer=pb.Ack.FromString)
        return list(call(iter(payloads), metadata=(("authorization", f"Bearer {token}"),), timeout=10))


def _mutated(rows, **changes):
    """A chunk message of `rows` with some arrays replaced by raw pb.Array messages."""
    message = _message(1, rows)
    for name, array in changes.items():
        getattr(message, name).CopyFrom(array)
    return message


def test_hostile_input_gets_its_status_and_the_table_holds_exactly_what_was_acked(ingest):
    server, shards = ingest
    address = server.address
    rng = np.random.default_rng(0)
    acked = []  # the row dicts the server acknowledged, in order

    def good(client, n=20):
        rows = _rows(n, [0, 1, 2], rng)
        assert client.send(rows["task_ids"], rows["obs"], rows["action"], rows["reward"],
                           rows["next_obs"], rows["terminated"], rows["truncated"]) == n
        acked.append(rows)

    def bad(message):
        """A good chunk, then `message` on the same stream: the first stays, the second fails."""
        client = IngestClient(address, TOKEN)
        good(client)
        try:
            return _code(lambda: client.send_message(message))
        finally:
            client.channel.close()

    base = _rows(8, [0, 1], rng)
    f64 = base["obs"].astype(np.float64)
    huge = pb.Array(dtype="<f4", shape=[2 ** 40, 2], data=b"\0" * 64)
    nan_reward = base["reward"].copy()
    nan_reward[3] = np.nan
    inf_obs = base["obs"].copy()
    inf_obs[2, 1] = np.inf
    wide_action = base["action"].copy()
    wide_action[0, 0] = 1.5
    bool_two = pb.Array(dtype="|b1", shape=[8], data=bytes([0, 1, 2, 0, 0, 0, 0, 0]))
    missing_reward = _message(1, base)
    missing_reward.ClearField("reward")
    big = _rows(3000, [0, 1, 2], rng)  # ~100 KB > MAX_MESSAGE
    valid_bytes = _message(1, base).SerializeToString()

    client = IngestClient(address, TOKEN)
    good(client)
    good(client, n=50)  # more than a shard's max_insert (16): stored in pieces
    results = {
        "missing token": _code(lambda: IngestClient(address, "").stub.Describe(pb.DescribeRequest(), timeout=10)),
        "wrong token": _code(lambda: IngestClient(address, "not-the-token").send(**_send_args(base))),
        "wrong dtype": bad(_mutated(base, obs=encode_array(f64, np.float64))),
        "wrong dtype of the same size": bad(_mutated(base, action=encode_array(base["action"], np.int32))),
        "wrong shape": bad(_mutated(base, obs=encode_array(np.zeros((8, 3)), np.float32))),
        "row counts differ": bad(_mutated(base, reward=encode_array(base["reward"][:7], np.float32))),
        "unknown task id": bad(_mutated(base, task_id=encode_array(np.full(8, 3), np.int64))),
        "negative task id": bad(_mutated(base, task_id=encode_array(np.full(8, -1), np.int64))),
        "nan reward": bad(_mutated(base, reward=encode_array(nan_reward, np.float32))),
        "inf obs": bad(_mutated(base, obs=encode_array(inf_obs, np.float32))),
        "action out of range": bad(_mutated(base, action=encode_array(wide_action, np.float32))),
        "bool byte 2": bad(_mutated(base, terminated=bool_two)),
        "huge dims": bad(_mutated(base, obs=huge)),
        "negative dims": bad(_mutated(base, reward=pb.Array(dtype="<f4", shape=[-8], data=b""))),
        "bytes disagree with shape": bad(_mutated(base, reward=pb.Array(dtype="<f4", shape=[8], data=b"\0" * 31))),
        "missing field": bad(missing_reward),
        "empty chunk": bad(_message(1, _rows(0, [0], rng))),
        "oversize message": bad(_message(1, big)),
        "garbage bytes": _code(lambda: _raw_insert(address, [b"\xff\xfe garbage \x00\x01" * 10])),
        "truncated message": _code(lambda: _raw_insert(address, [valid_bytes[:len(valid_bytes) // 2]])),
        "garbage with wrong token": _code(lambda: _raw_insert(address, [b"\xff" * 10], token="nope")),
    }
    # A producer that goes away mid-stream (no half-close): what it got acknowledged stays.
    gone = IngestClient(address, TOKEN)
    good(gone)
    good(gone)
    gone._acks.cancel()
    results["stream cancelled midway"] = _code(lambda: next(gone._acks))
    gone.channel.close()
    # A producer process killed mid-stream (the connection just drops): its two acked chunks stay.
    killed = subprocess.Popen([sys.executable, "-c", KILLED_PRODUCER, address, TOKEN], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert [killed.stdout.readline().strip() for _ in range(2)] == ["6", "6"]
    finally:
        killed.kill()
        killed.wait()
    acked += [killed_rows(k) for k in range(2)]
    client.close()
    # More calls than max_streams (3): the fourth is refused at once, the first three go on.
    holders = _hold_every_stream(address, lambda h: good(h, n=4))
    results["too many streams"] = _code(lambda: IngestClient(address, TOKEN).send(**_send_args(base)))
    for h in holders:
        h.close()

    assert results == {
        "missing token": "UNAUTHENTICATED", "wrong token": "UNAUTHENTICATED",
        "wrong dtype": "INVALID_ARGUMENT", "wrong dtype of the same size": "INVALID_ARGUMENT",
        "wrong shape": "INVALID_ARGUMENT",
        "row counts differ": "INVALID_ARGUMENT", "unknown task id": "INVALID_ARGUMENT",
        "negative task id": "INVALID_ARGUMENT", "nan reward": "INVALID_ARGUMENT",
        "inf obs": "INVALID_ARGUMENT", "action out of range": "INVALID_ARGUMENT",
        "bool byte 2": "INVALID_ARGUMENT", "huge dims": "INVALID_ARGUMENT",
        "negative dims": "INVALID_ARGUMENT", "bytes disagree with shape": "INVALID_ARGUMENT",
        "missing field": "INVALID_ARGUMENT", "empty chunk": "INVALID_ARGUMENT",
        "oversize message": "RESOURCE_EXHAUSTED", "garbage bytes": "INVALID_ARGUMENT",
        "truncated message": "INVALID_ARGUMENT", "garbage with wrong token": "UNAUTHENTICATED",
        "stream cancelled midway": "CANCELLED", "too many streams": "RESOURCE_EXHAUSTED",
    }
    # Still serving, and the tables hold exactly the acknowledged rows, in order.
    with IngestClient(address, TOKEN) as client:
        good(client)
    stored = {}
    for part in ray.get([s.rows.remote() for s in shards]):
        stored.update(part)
    for task in range(NUM_TASKS):
        mine = [{k: r[k][r["task_ids"] == task] for k in r} for r in acked]
        want = {k: np.concatenate([m[k] for m in mine]) for k in ("obs", "action", "reward", "next_obs",
                                                                 "terminated", "truncated")}
        assert len(stored[task]["reward"]) == len(want["reward"])
        for k, v in want.items():
            np.testing.assert_array_equal(stored[task][k], v, err_msg=f"task {task} {k}")
    counts = np.bincount(np.concatenate([r["task_ids"] for r in acked]), minlength=NUM_TASKS)
    metrics = server.metrics()
    assert [metrics[f"ingest/rows/{n}"] for n in "abc"] == counts.tolist()
    # Calls we refused are counted by status (RESOURCE_EXHAUSTED comes from grpc itself, uncounted).
    assert metrics["ingest/rejected/UNAUTHENTICATED"] == 3
    assert metrics["ingest/rejected/INVALID_ARGUMENT"] == 17


def _hold_every_stream(address, send, streams=3, timeout=120.0):
    """`streams` clients, each with an open stream that `send` has used. grpc gives a call's
    slot back when its handler thread ends, a moment after the client saw the call end, so the
    calls that just ended may still hold slots: until all are free a send is refused with
    RESOURCE_EXHAUSTED, and then the clients close and try again."""
    deadline = time.monotonic() + timeout
    while True:
        holders = [IngestClient(address, TOKEN) for _ in range(streams)]
        try:
            for h in holders:
                send(h)
            return holders
        except grpc.RpcError as exc:
            for h in holders:
                h.close()
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _send_args(rows):
    return dict(task_ids=rows["task_ids"], obs=rows["obs"], action=rows["action"], reward=rows["reward"],
                next_obs=rows["next_obs"], terminated=rows["terminated"], truncated=rows["truncated"])


def test_a_producer_ahead_of_the_learner_waits_for_it(local_ray):
    """Back-pressure: with a samples-per-insert limit (1, tolerance (16 + 30) / 2), the third
    chunk's insert waits at the shard, so its send does not return until the learner samples."""
    shard = InspectableShard.remote([0, 1, 2], samples_per_insert=1.0)
    server = IngestServer(ChunkSchema.of(SPEC, NUM_TASKS), ["a", "b", "c"], [shard], [16], TOKEN).start()
    rng = np.random.default_rng(2)
    try:
        with IngestClient(server.address, TOKEN) as client, ThreadPoolExecutor(1) as pool:
            assert client.send(**_send_args(_rows(3, [0, 1, 2], rng))) == 3  # every task: sampling may start
            assert client.send(**_send_args(_rows(16, [0, 1, 2], rng))) == 16  # within the tolerance
            third = pool.submit(client.send, **_send_args(_rows(16, [0, 1, 2], rng)))
            # Held back: 16 + 16 inserted rows exceed the tolerance of 23. Its insert waits at
            # the shard (counted as blocked, nothing stored) and only a sample can release it.
            deadline = time.monotonic() + 120
            while ray.get(shard.stats.remote())["replay/blocked_inserts"] < 1:
                assert time.monotonic() < deadline and not third.done(), "the third insert did not wait"
                time.sleep(0.05)
            assert ray.get(shard.stats.remote())["replay/size"] == 19 and not third.done()
            assert ray.get(shard.sample.remote(10)) is not None  # the learner takes 30 rows
            assert third.result(timeout=120) == 16
    finally:
        server.stop(0)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_server_serves_tls_clients_only(local_ray, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    cert, key = (tmp_path / "cert.pem").read_bytes(), (tmp_path / "key.pem").read_bytes()
    shard = InspectableShard.remote([0, 1, 2])
    server = IngestServer(ChunkSchema.of(SPEC, NUM_TASKS), ["a", "b", "c"], [shard], [16], TOKEN,
                          tls=(key, cert)).start()
    try:
        rows = _rows(10, [0, 1], np.random.default_rng(1))
        with IngestClient(server.address, TOKEN, root_certificates=cert) as client:
            assert client.describe().tasks == ["a", "b", "c"]
            assert client.send(**_send_args(rows)) == 10
        plain = IngestClient(server.address, TOKEN)
        assert _code(lambda: plain.stub.Describe(pb.DescribeRequest(), metadata=plain.metadata,
                                                 timeout=5)) == "UNAVAILABLE"
        plain.channel.close()
        assert len(ray.get(shard.rows.remote())[0]["reward"]) == 5
    finally:
        server.stop(0)
