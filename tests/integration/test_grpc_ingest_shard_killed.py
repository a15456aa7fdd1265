"""A replay shard killed while a gRPC producer streams into it: real Ray on loopback, two real
replay shards (ReplayService + ReplayTable in Ray actors), the real gRPC server on 127.0.0.1 and
a producer thread sending chunk after chunk on one stream.

The chunk being stored when the shard dies ends the stream with UNAVAILABLE (the service is
gone; the producer's chunk is not wrong), and the surviving shard holds every acknowledged row
exactly once, in order, plus at most its part of the one chunk that failed: nothing acknowledged
lost, nothing duplicated."""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import ray

from ingest.client import IngestClient
from ingest.codec import ChunkSchema
from ingest.server import IngestServer
from tests.support.inspectable_shard import SPEC, InspectableShard

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
NUM_TASKS = 3

ROWS = 6  # per chunk: tasks 0, 1, 2, 0, 1, 2; shard 0 holds tasks {0, 2}, shard 1 task {1}
MAX_CHUNKS = 2000  # the producer's bound, far beyond the chunks sent before the kill


def _chunk(k: int) -> dict:
    """Chunk k: row i has reward k * ROWS + i, so every stored row names its chunk and place."""
    reward = np.arange(k * ROWS, (k + 1) * ROWS, dtype=np.float32)
    return dict(task_ids=np.arange(ROWS) % NUM_TASKS, obs=np.zeros((ROWS, 2), np.float32),
                action=np.zeros((ROWS, 2), np.float32), reward=reward,
                next_obs=np.zeros((ROWS, 2), np.float32), terminated=np.zeros(ROWS, bool),
                truncated=np.zeros(ROWS, bool))


class Producer(threading.Thread):
    """Sends chunks 0, 1, 2, ... on one stream until the server ends it; records the acks."""

    def __init__(self, address):
        super().__init__(daemon=True)
        self.client = IngestClient(address, TOKEN)
        self.acked: list[int] = []
        self.error: grpc.RpcError | None = None

    def run(self):
        try:
            for k in range(MAX_CHUNKS):
                assert self.client.send(**_chunk(k)) == ROWS
                self.acked.append(k)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.client.channel.close()


def _wait_for(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)


def test_a_shard_killed_mid_stream_ends_it_unavailable_and_keeps_what_was_acknowledged(local_ray):
    shards = [InspectableShard.remote([0, 2]), InspectableShard.remote([1])]
    server = IngestServer(ChunkSchema.of(SPEC, NUM_TASKS), ["a", "b", "c"], shards, [16, 16], TOKEN).start()
    producer = Producer(server.address)
    try:
        producer.start()
        _wait_for(lambda: len(producer.acked) >= 5, "five acknowledged chunks")
        ray.kill(shards[1], no_restart=True)
        producer.join(timeout=120)
        assert not producer.is_alive(), "the stream did not end after the shard died"
        assert producer.error is not None, f"all {MAX_CHUNKS} chunks acknowledged after the kill"
        assert producer.error.code() == grpc.StatusCode.UNAVAILABLE, producer.error
        failed = len(producer.acked)  # the chunk whose store failed
        assert producer.acked == list(range(failed))
        assert f"could not store chunk {failed + 1} (" in producer.error.details()  # sequence numbers start at 1

        # The surviving shard: every acknowledged row of its tasks once and in order, then at
        # most its part of the failed chunk.
        kept = ray.get(shards[0].rows.remote())
        acked_rewards = {t: [k * ROWS + i for k in range(failed) for i in range(ROWS) if i % NUM_TASKS == t]
                         for t in (0, 2)}
        for task in (0, 2):
            rewards = kept[task]["reward"].tolist()
            assert rewards[:len(acked_rewards[task])] == acked_rewards[task], f"task {task}"
            extra = rewards[len(acked_rewards[task]):]
            assert extra in ([], [failed * ROWS + i for i in range(ROWS) if i % NUM_TASKS == task]), extra
        metrics = server.metrics()
        assert metrics["ingest/rows"] == failed * ROWS and metrics["ingest/chunks"] == failed
        assert metrics["ingest/rejected/UNAVAILABLE"] == 1
        # The server goes on answering: a new stream is refused the same way, not hung.
        with pytest.raises(grpc.RpcError) as again:
            IngestClient(server.address, TOKEN).send(**_chunk(failed + 1))
        assert again.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
