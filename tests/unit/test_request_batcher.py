"""`RequestBatcher` (the inference server's batching) on a plain asyncio loop: concurrent
requests run as one batch, each caller gets its own reply, a batch goes without a missing
client after `max_wait`, requests arriving during a batch form the next one, and a failed
batch fails its callers only."""
from __future__ import annotations

import asyncio

import pytest

from actors.request_batcher import RequestBatcher

LONG = 60.0  # a wait no test reaches: a batch that needs it would time the test out


class Recorder:
    def __init__(self):
        self.batches: list[list] = []
        self.release: asyncio.Event | None = None

    async def __call__(self, requests: list) -> list:
        self.batches.append(list(requests))
        if self.release is not None:
            await self.release.wait()
        if "boom" in requests:
            raise RuntimeError("forward failed")
        return [f"reply to {r}" for r in requests]


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def test_concurrent_requests_of_every_client_run_as_one_batch_and_get_their_own_replies():
    async def main():
        run = Recorder()
        batcher = RequestBatcher(run, clients=3, max_wait=LONG)
        replies = await asyncio.gather(*(batcher.submit(r) for r in "abc"))
        return run, batcher, replies

    run, batcher, replies = _run(main())
    assert run.batches == [["a", "b", "c"]]
    assert replies == ["reply to a", "reply to b", "reply to c"]
    assert batcher.stats() == {"batches": 1, "requests": 3, "largest_batch": 3}


def test_a_batch_waits_for_a_client_that_asks_later():
    async def main():
        run = Recorder()
        batcher = RequestBatcher(run, clients=2, max_wait=LONG)
        early = asyncio.ensure_future(batcher.submit("a"))
        for _ in range(20):  # the flusher gets the loop many times before "b" asks
            await asyncio.sleep(0)
        assert run.batches == []
        return run, await asyncio.gather(early, batcher.submit("b"))

    run, replies = _run(main())
    assert run.batches == [["a", "b"]] and replies == ["reply to a", "reply to b"]


def test_a_batch_goes_without_a_silent_client_after_max_wait():
    async def main():
        run = Recorder()
        batcher = RequestBatcher(run, clients=2, max_wait=0.01)
        return run, await batcher.submit("a")

    run, reply = _run(main())
    assert run.batches == [["a"]] and reply == "reply to a"


def test_requests_arriving_during_a_batch_form_the_next_batch():
    async def main():
        run = Recorder()
        run.release = asyncio.Event()
        batcher = RequestBatcher(run, clients=2, max_wait=LONG)
        first = [asyncio.ensure_future(batcher.submit(r)) for r in "ab"]
        while not run.batches:
            await asyncio.sleep(0)
        second = [asyncio.ensure_future(batcher.submit(r)) for r in "cd"]
        await asyncio.sleep(0)
        run.release.set()
        return run, await asyncio.gather(*first, *second)

    run, replies = _run(main())
    assert run.batches == [["a", "b"], ["c", "d"]]
    assert replies == [f"reply to {r}" for r in "abcd"]


def test_a_failed_batch_fails_its_callers_and_the_next_batch_runs():
    async def main():
        batcher = RequestBatcher(Recorder(), clients=2, max_wait=LONG)
        failed = await asyncio.gather(batcher.submit("boom"), batcher.submit("x"), return_exceptions=True)
        return failed, await asyncio.gather(batcher.submit("y"), batcher.submit("z"))

    failed, replies = _run(main())
    assert all(isinstance(e, RuntimeError) for e in failed)
    assert replies == ["reply to y", "reply to z"]


def test_a_batcher_needs_a_client():
    with pytest.raises(ValueError, match="clients"):
        RequestBatcher(Recorder(), clients=0, max_wait=0.0)

