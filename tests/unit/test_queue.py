"""replay/: FifoTable and the QueueService's back-pressure, timeouts and counters (no Ray)."""
from __future__ import annotations

import asyncio

import pytest

from replay.service import QueueService
from replay.tables import FifoTable, make_table


async def _settle(rounds: int = 5) -> None:
    """Let every ready task run until it blocks again (event-loop turns, not wall time)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --- FifoTable ----------------------------------------------------------------------------------


def test_fifo_order_and_each_item_once():
    table = FifoTable(capacity=5)
    for i in range(5):
        table.insert(f"u{i}", task_id=i % 2)
    assert len(table) == 5
    assert table.sample(2) == ["u0", "u1"]
    assert table.sample(3) == ["u2", "u3", "u4"]
    assert len(table) == 0
    assert not table.can_sample(1)


def test_fifo_capacity_and_errors():
    table = FifoTable(capacity=2)
    assert table.capacity == 2
    table.insert("a", 0)
    assert table.can_insert()
    table.insert("b", 0)
    assert not table.can_insert()
    with pytest.raises(OverflowError):
        table.insert("c", 0)
    assert len(table) == 2  # the refused item is not stored
    assert table.can_sample(2) and not table.can_sample(3)
    with pytest.raises(LookupError, match="2 items, 3 requested"):
        table.sample(3)
    assert table.sample(1) == ["a"]  # a refused sample takes nothing
    assert table.can_insert()


def test_fifo_interleaved_insert_and_sample_keep_order():
    table = FifoTable(capacity=3)
    out = []
    for i in range(10):
        table.insert(i, 0)
        if len(table) == 3:
            out += table.sample(2)
    out += table.sample(len(table))
    assert out == list(range(10))


@pytest.mark.parametrize("capacity", [0, -1])
def test_fifo_rejects_non_positive_capacity(capacity):
    with pytest.raises(ValueError, match="capacity"):
        FifoTable(capacity)


def test_make_table():
    assert isinstance(make_table("fifo", 4), FifoTable)
    assert make_table("fifo", 4).capacity == 4
    with pytest.raises(ValueError, match="unknown table kind 'prioritized'"):
        make_table("prioritized", 4)


# --- QueueService -------------------------------------------------------------------------------


def test_insert_into_full_queue_waits_for_a_sample_and_is_counted():
    async def main():
        service = QueueService(FifoTable(capacity=2))
        assert (await service.insert(["a"], 0))["depth"] == 1
        assert (await service.insert(["b"], 0))["depth"] == 2
        assert service.blocked_inserts == 0

        blocked = asyncio.create_task(service.insert(["c"], 1))
        await _settle()
        assert not blocked.done()
        assert service.blocked_inserts == 1
        assert len(service.table) == 2 and service.inserted == 2

        assert await service.sample(1) == ["a"]
        assert (await blocked)["depth"] == 2  # depth after the waiting insert went in
        assert service.inserted == 3
        assert await service.sample(2) == ["b", "c"]
        stats = service.stats()
        assert stats["queue/blocked_inserts"] == 1.0
        assert stats["queue/blocked_seconds"] >= 0.0
        assert stats["queue/inserted"] == 3.0 and stats["queue/sampled"] == 3.0
        assert stats["queue/depth"] == 0.0 and stats["queue/capacity"] == 2.0

    asyncio.run(main())


def test_several_blocked_inserts_enter_as_room_frees():
    async def main():
        service = QueueService(FifoTable(capacity=1))
        await service.insert([0], 0)
        waiting = [asyncio.create_task(service.insert([i], 0)) for i in (1, 2, 3)]
        await _settle()
        assert service.blocked_inserts == 3
        assert not any(t.done() for t in waiting)
        got = []
        for _ in range(4):
            got += await service.sample(1)
            await _settle()
        assert all(t.done() for t in waiting)
        assert sorted(got) == [0, 1, 2, 3] and got[0] == 0
        assert len(service.table) == 0

    asyncio.run(main())


@pytest.mark.parametrize("wake, checks", [("one", 2), ("all", 40)])
def test_a_sample_wakes_one_blocked_insert_per_freed_slot(wake, checks):
    """40 producers blocked on a full queue; a sample of 2 lets the first two in. Waking one
    waiter per freed slot checks the queue twice; waking all of them, 40 times."""
    async def main():
        service = QueueService(FifoTable(capacity=4), wake=wake)
        await service.insert(["a", "b", "c", "d"], 0)
        waiting = [asyncio.create_task(service.insert([f"p{i}"], 0)) for i in range(40)]
        await _settle()
        assert service.blocked_inserts == 40 and service.wakeups == 0
        assert await service.sample(2) == ["a", "b"]
        await _settle()
        assert service.wakeups == checks
        assert [t.done() for t in waiting] == [True, True] + [False] * 38
        assert await service.sample(4) == ["c", "d", "p0", "p1"]
        await _settle()
        assert [t.done() for t in waiting] == [True] * 6 + [False] * 34
        assert service.stats()["queue/wakeups"] == service.wakeups
        for t in waiting:
            t.cancel()

    asyncio.run(main())


def test_the_wake_rule_is_named():
    with pytest.raises(ValueError, match="wake must be 'one'"):
        QueueService(FifoTable(capacity=2), wake="some")


def test_sample_times_out_with_none_and_the_queue_still_works():
    async def main():
        service = QueueService(FifoTable(capacity=4))
        await service.insert(["a"], 0)
        assert await service.sample(2, timeout=0.01) is None
        assert len(service.table) == 1 and service.sampled == 0  # nothing was taken
        # The timed-out waiter released the lock: inserts and samples go on.
        await service.insert(["b"], 0)
        assert await service.sample(2, timeout=5.0) == ["a", "b"]
        assert service.sampled == 2

    asyncio.run(main())


def test_sample_waits_for_enough_items_in_fifo_order():
    async def main():
        service = QueueService(FifoTable(capacity=8))
        pending = asyncio.create_task(service.sample(3))
        for i in range(2):
            await service.insert([f"u{i}"], 0)
        await _settle()
        assert not pending.done()  # two items are not a batch of three
        await service.insert(["u2"], 0)
        await service.insert(["u3"], 0)
        assert await pending == ["u0", "u1", "u2"]
        assert await service.sample(1) == ["u3"]

    asyncio.run(main())


def test_insert_unwraps_the_reference_and_counts_per_task():
    async def main():
        service = QueueService(FifoTable(capacity=8))
        payload = object()
        for task in (0, 1, 0, 2, 0):
            await service.insert([payload], task)
        assert service.inserted_per_task == {0: 3, 1: 1, 2: 1}
        assert service.inserted == 5
        items = await service.sample(5)
        assert all(item is payload for item in items)  # the list wrapper is gone

    asyncio.run(main())


def test_a_batch_insert_keeps_order_and_task_ids_and_waits_item_by_item():
    async def main():
        service = QueueService(FifoTable(capacity=2))
        batch = asyncio.create_task(service.insert(["a", "b", "c"], [0, 1, 1]))
        await _settle()
        assert not batch.done() and len(service.table) == 2  # "c" waits for room
        assert service.blocked_inserts == 1
        assert await service.sample(1) == ["a"]
        assert (await batch)["depth"] == 2
        assert await service.sample(2) == ["b", "c"]
        assert service.inserted_per_task == {0: 1, 1: 2}
        with pytest.raises(ValueError, match="2 items but 1 task ids"):
            await service.insert(["d", "e"], [0])
        assert service.inserted == 3  # the bad batch stored nothing

    asyncio.run(main())


def test_insert_replies_carry_the_newest_published_weights_version():
    async def main():
        service = QueueService(FifoTable(capacity=8))
        assert (await service.insert(["a"], 0))["weights_version"] == -1
        service.set_weights_version(3)
        assert (await service.insert(["b"], 0))["weights_version"] == 3
        service.set_weights_version(2)  # a restarted learner went back to its checkpoint
        assert (await service.insert(["c"], 0))["weights_version"] == 2

    asyncio.run(main())
