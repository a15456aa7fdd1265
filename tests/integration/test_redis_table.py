"""The durable replay table against a real redis-server (replay/redis_server.py starts it).

Round trip: what one table acknowledged, a second table on the same Redis and namespace holds,
row for row, wrap-around included. Crash: redis-server SIGKILLed mid-stream under AOF
`everysec` and restarted on its directory loses at most the inserts of about the last second.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from replay.redis_server import start_redis_server
from replay.redis_table import RedisReplayTable, StoredReplayError, redis_client, replay_namespace
from tests.support.replay_rows import chunk

pytestmark = pytest.mark.integration

OBS_SHAPE, ACTION_DIM = (3,), 2


@pytest.fixture
def server(tmp_path):
    server = start_redis_server(tmp_path / "redis")
    yield server
    server.stop()


def table(url, tasks=(0, 1), capacity=10, run="run-a", block_rows=3, **kw):
    return RedisReplayTable(list(tasks), capacity, OBS_SHAPE, np.float32, ACTION_DIM,
                            redis_client(url), replay_namespace(run), block_rows=block_rows, **kw)


def test_a_second_table_on_the_same_namespace_holds_every_acknowledged_row(server):
    first = table(server.url)
    assert first.restored == 0
    first.insert(chunk(0, 4, 0))
    first.insert(chunk(4, 8, 0))          # wraps the ring of 10 across blocks of 3
    first.insert(chunk(100, 5, [1, 0, 1, 1, 0]))
    first.insert(chunk(200, 25, 1))       # more rows than the capacity at once
    second = table(server.url)
    assert second.restored == len(first) == 20
    for task in (0, 1):
        a, b = first._rings[task], second._rings[task]
        assert (a.pos, a.size) == (b.pos, b.size)
        for field in a.arrays:
            np.testing.assert_array_equal(a.arrays[field], b.arrays[field], err_msg=field)
        assert second.inserted(task) == first.inserted(task)
    assert sorted(second._rings[1].arrays["version"].tolist()) == list(range(215, 225))
    batch = second.sample(4, np.random.default_rng(0))
    assert batch["obs"].shape == (2, 4, 3)
    # Another run's namespace on the same Redis starts empty; another layout is refused.
    assert table(server.url, run="run-b").restored == 0
    with pytest.raises(StoredReplayError, match="layout"):
        table(server.url, capacity=11)


def test_a_write_redis_refused_is_counted_and_neither_stored_nor_acknowledged(server):
    t = table(server.url)
    t.insert(chunk(0, 2, 0))
    server.stop()
    with pytest.raises(Exception):
        t.insert(chunk(2, 2, 0))
    assert t.write_failures == 1
    assert t.size(0) == 2 and t.store_stats()["replay/redis_write_failures"] == 1.0


def test_sigkill_of_redis_server_under_aof_everysec_loses_at_most_about_a_second(tmp_path):
    server = start_redis_server(tmp_path / "redis")
    t = table(server.url, tasks=(0,), capacity=1_000_000, block_rows=4096)
    acks: list[tuple[float, int]] = []  # (time of the ack, rows acknowledged so far)
    stop = threading.Event()

    def insert_until_it_fails():
        n = 0
        while not stop.is_set():
            try:
                t.insert(chunk(n, 16, 0))
            except Exception:
                return
            n += 16
            acks.append((time.monotonic(), n))

    inserter = threading.Thread(target=insert_until_it_fails)
    inserter.start()
    time.sleep(2.5)
    killed_at = time.monotonic()
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    inserter.join(timeout=30)
    stop.set()
    acked = acks[-1][1]  # no insert can be acknowledged by a dead server
    in_last_2s = acked - max((n for at, n in acks if at <= killed_at - 2.0), default=0)

    restarted = start_redis_server(tmp_path / "redis")
    try:
        back = table(restarted.url, tasks=(0,), capacity=1_000_000, block_rows=4096)
        restored = back.restored
        # What came back is a prefix of the stream: rows 0..restored-1, no holes.
        np.testing.assert_array_equal(back._rings[0].arrays["version"][:restored], np.arange(restored))
    finally:
        restarted.stop()
    lost = acked - restored
    print(f"\nredis-server SIGKILL: {acked} rows acknowledged, {restored} back, {lost} lost; "
          f"{in_last_2s} were acknowledged in the last 2 s ({acked / 2.5:.0f} rows/s)")
    assert acked > 1000
    assert 0 <= lost <= in_last_2s
