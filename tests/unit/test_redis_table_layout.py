"""`RedisReplayTable` against an in-memory Redis fake (tests/support/fake_redis.py): what it
writes where (raw bytes in blocks of B rows, the ring's meta as absolute values), one
transaction per insert, a failed transaction neither stored nor acknowledged, a second table
on the same namespace loading exactly the acknowledged rows, and every torn or foreign state
refused with a message naming the key. tests/integration/test_redis_table.py runs the same
round trip and a crash against a real redis-server."""
from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from replay.redis_table import RedisReplayTable, StoredReplayError, replay_namespace
from tests.support.fake_redis import FakeRedis
from tests.support.replay_rows import chunk

OBS_SHAPE, ACTION_DIM, CAPACITY, BLOCK = (3,), 2, 10, 3
NS = replay_namespace("run-a")


def table(client, tasks=(0, 1), capacity=CAPACITY, namespace=NS, block_rows=BLOCK, obs_shape=OBS_SHAPE):
    return RedisReplayTable(list(tasks), capacity, obs_shape, np.float32, ACTION_DIM, client,
                            namespace, block_rows=block_rows)


def meta(client, task):
    return {k.decode(): v.decode() for k, v in client.hgetall(f"{NS}:task:{task}:meta").items()}


def test_the_namespace_is_the_runs():
    assert replay_namespace("2026-11-28_run") == "accord:2026-11-28_run:replay"


def test_rows_are_stored_as_raw_bytes_in_blocks_at_their_ring_positions():
    client = FakeRedis()
    t = table(client)
    assert t.insert(chunk(0, 4, 0)) == 4
    rows = chunk(0, 4, 0)
    for field in ("obs", "reward", "version", "terminated"):
        raw = np.ascontiguousarray(rows[field], dtype=t.dtypes[field])
        assert client.get(f"{NS}:task:0:{field}:0") == raw[:3].tobytes(), field
        assert client.get(f"{NS}:task:0:{field}:1") == raw[3:].tobytes(), field
    assert client.get(f"{NS}:task:1:reward:0") is None
    m = meta(client, 0)
    assert (m["pos"], m["size"], m["inserted"]) == ("4", "4", "4")
    assert json.loads(m["layout"]) == {"block_rows": BLOCK, "capacity": CAPACITY, "fields": {
        k: [t.dtypes[k].str, list(t.shapes[k])] for k in t.dtypes}}
    assert meta(client, 1) == {}
    # The wrap: 8 more rows fill positions 4..9, then 0..1; block 0 now holds rows 10, 11, 2.
    t.insert(chunk(4, 8, 0))
    block0 = np.frombuffer(client.get(f"{NS}:task:0:version:0"), np.int64)
    assert block0.tolist() == [10, 11, 2]
    m = meta(client, 0)
    assert (m["pos"], m["size"], m["inserted"]) == ("2", "10", "12")


def test_a_chunk_of_at_least_the_capacity_keeps_its_newest_rows_from_row_zero():
    for n in (CAPACITY, CAPACITY + 7):
        client = FakeRedis()
        t = table(client)
        t.insert(chunk(0, 3, 1))
        t.insert(chunk(100, n, 1))
        m = meta(client, 1)
        assert (m["pos"], m["size"], m["inserted"]) == ("0", str(CAPACITY), str(3 + n))
        stored = b"".join(client.get(f"{NS}:task:1:version:{b}") for b in range(4))
        assert np.frombuffer(stored, np.int64).tolist() == list(range(100 + n - CAPACITY, 100 + n))
        assert t._rings[1].arrays["version"].tolist() == list(range(100 + n - CAPACITY, 100 + n))


def test_a_second_table_on_the_namespace_loads_every_acknowledged_row():
    client = FakeRedis()
    first = table(client)
    assert first.restored == 0
    first.insert(chunk(0, 4, 0))
    first.insert(chunk(4, 8, 0))
    first.insert(chunk(100, 5, [1, 0, 1, 1, 0]))
    first.insert(chunk(200, 25, 1))
    assert client.transactions == 4      # one MULTI/EXEC per insert, every task in it
    second = table(client)
    assert second.restored == len(first) == 20
    for task in (0, 1):
        a, b = first._rings[task], second._rings[task]
        assert (a.pos, a.size) == (b.pos, b.size)
        for field in a.arrays:
            np.testing.assert_array_equal(a.arrays[field], b.arrays[field], err_msg=field)
            assert b.arrays[field].dtype == a.arrays[field].dtype
        assert second.inserted(task) == first.inserted(task)
    assert (second.inserted(0), second.inserted(1)) == (14, 28)
    # A table holding only task 1 (another shard count on resume) loads only task 1's rows.
    only_one = table(client, tasks=(1,))
    assert only_one.restored == 10 and only_one.inserted(1) == 28
    assert table(client, namespace=replay_namespace("run-b")).restored == 0


def test_a_partly_filled_ring_loads_its_rows_and_its_position():
    client = FakeRedis()
    table(client).insert(chunk(0, 5, 0))
    again = table(client)
    ring = again._rings[0]
    assert (ring.pos, ring.size, again.restored, again.size(0)) == (5, 5, 5, 5)
    assert ring.arrays["version"].tolist() == [0, 1, 2, 3, 4, 0, 0, 0, 0, 0]
    again.insert(chunk(5, 2, 0))         # and goes on where the first left off
    assert table(client)._rings[0].arrays["version"][:7].tolist() == list(range(7))


def test_a_failed_transaction_is_counted_and_neither_stored_nor_acknowledged():
    client = FakeRedis()
    t = table(client)
    t.insert(chunk(0, 2, 0))
    client.fail_next_exec = True
    with pytest.raises(redis.ConnectionError):
        t.insert(chunk(2, 2, 0))
    assert t.write_failures == 1 and t.store_stats() == {"replay/restored": 0.0,
                                                         "replay/redis_write_failures": 1.0}
    assert t.size(0) == 2 and t.inserted(0) == 2 and meta(client, 0)["inserted"] == "2"
    client.fail_next_exec = True
    with pytest.raises(redis.ConnectionError):
        t.insert(chunk(3, 1, 1))
    assert t.write_failures == 2 and t.size(1) == 0
    t.insert(chunk(4, 1, 0))             # the next insert goes through whole
    assert table(client)._rings[0].arrays["version"][:3].tolist() == [0, 1, 4]
    assert table(client).store_stats()["replay/restored"] == 3.0


@pytest.mark.parametrize("other", [{"capacity": 11}, {"block_rows": 4}, {"obs_shape": (4,)}])
def test_rows_of_another_layout_are_refused(other):
    client = FakeRedis()
    table(client).insert(chunk(0, 2, 0))
    with pytest.raises(StoredReplayError, match=f"Redis {NS}:task:0:meta holds replay rows of another layout") as err:
        table(client, **other)
    stored, ours = table(FakeRedis()).layout, table(FakeRedis(), **other).layout
    assert f"another layout ({stored}) than this run's ({ours})" in str(err.value)


def _torn(meta_update=None, drop=None, cut_block=None):
    client = FakeRedis()
    table(client).insert(chunk(0, 5, 0))
    key = f"{NS}:task:0:meta"
    if meta_update:
        client.hashes[key].update({k.encode(): str(v).encode() for k, v in meta_update.items()})
    if drop:
        del client.hashes[key][drop.encode()]
    if cut_block:
        field, block, keep = cut_block
        name = f"{NS}:task:0:{field}:{block}"
        if keep is None:
            del client.strings[name]
        else:
            client.strings[name] = client.strings[name][:keep]
    return client


@pytest.mark.parametrize("torn,message", [
    ({"drop": "pos"}, "pos/size/inserted missing or not integers"),
    ({"drop": "inserted"}, "pos/size/inserted missing or not integers"),
    ({"meta_update": {"size": "five"}}, "pos/size/inserted missing or not integers"),
    ({"meta_update": {"pos": 4}}, r"inconsistent ring pos=4 size=5 inserted=5 for capacity 10"),
    # Each case breaks one condition and keeps the others (inserted >= size).
    ({"meta_update": {"pos": 11, "size": 10, "inserted": 20}}, "inconsistent ring pos=11"),
    ({"meta_update": {"pos": 10, "size": 10, "inserted": 20}}, "inconsistent ring pos=10"),
    ({"meta_update": {"pos": -1, "size": -1}}, "inconsistent ring pos=-1"),
    ({"meta_update": {"pos": 0, "size": 11, "inserted": 20}}, "inconsistent ring pos=0 size=11"),
    ({"meta_update": {"inserted": 4}}, "inconsistent ring pos=5 size=5 inserted=4"),
    ({"cut_block": ("reward", 1, 7)}, "reward block 1 holds 7 bytes, the ring's 5 rows need 8"),
    ({"cut_block": ("obs", 0, None)}, "obs block 0 holds 0 bytes, the ring's 5 rows need 36"),
])
def test_a_torn_ring_is_refused_naming_what_is_wrong(torn, message):
    with pytest.raises(StoredReplayError, match=f"Redis {NS}:task:0:meta"):
        table(_torn(**torn))
    with pytest.raises(StoredReplayError, match=message):
        table(_torn(**torn))


def test_states_a_full_ring_can_be_in_load():
    """A wrapped ring has any pos below the capacity and size == capacity; inserted counts on."""
    client = _torn(meta_update={"pos": 3, "size": 10, "inserted": 10})
    client.strings.update({f"{NS}:task:0:{f}:{b}": client.strings.get(f"{NS}:task:0:{f}:0")
                           for f in ("obs", "action", "reward", "next_obs", "terminated", "truncated",
                                     "version") for b in range(4)})
    ring = table(client)._rings[0]
    assert (ring.pos, ring.size) == (3, 10)
    assert ring.arrays["version"].tolist() == [0, 1, 2] * 3 + [0]
    assert table(_torn(meta_update={"pos": 0, "size": 0, "inserted": 0})).restored == 0


def test_a_block_longer_than_the_ring_needs_is_read_up_to_the_ring():
    client = _torn()
    name = f"{NS}:task:0:version:1"
    client.strings[name] += np.int64(99).tobytes()
    assert table(client)._rings[0].arrays["version"][:5].tolist() == [0, 1, 2, 3, 4]


def test_block_rows_must_be_positive():
    with pytest.raises(ValueError, match="block_rows must be >= 1, got 0"):
        table(FakeRedis(), block_rows=0)


def test_tasks_without_rows_are_skipped_and_the_next_ones_still_load():
    client = FakeRedis()
    table(client, tasks=(0, 1, 2)).insert(chunk(0, 4, 1))
    again = table(client, tasks=(0, 1, 2))
    assert again.restored == 4 and again.size(1) == 4 and again.size(0) == again.size(2) == 0


def test_blocks_of_one_row_and_rows_of_other_dtypes_round_trip():
    """Chunks may come with float64 rewards or int32 versions; Redis holds the table's dtypes,
    so a second table reads back the same values."""
    client = FakeRedis()
    t = table(client, block_rows=1)
    rows = chunk(0, 12, 0)
    rows.update(reward=rows["reward"].astype(np.float64), version=rows["version"].astype(np.int32),
                obs=rows["obs"].astype(np.float64))
    t.insert(rows)
    assert client.get(f"{NS}:task:0:version:9") == np.int64(11).tobytes()
    again = table(client, block_rows=1)._rings[0]      # the newest 10 of the 12 rows
    np.testing.assert_array_equal(again.arrays["version"], np.arange(2, 12))
    np.testing.assert_allclose(again.arrays["reward"], np.arange(2, 12) / 7, rtol=1e-6)
    assert again.arrays["obs"][0].tolist() == [2.0] * 3
