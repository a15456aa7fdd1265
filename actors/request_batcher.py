"""Gathers concurrent requests into one batch, without Ray: the inference server's batching.

Each of the server's rollout actors has at most one step in flight, so a batch is complete
when every one of them (`clients`) has asked: it then runs at once. Otherwise the first
request waits at most `max_wait` seconds for the others, so a slow or dead actor delays the
rest by that much and no more. Requests that arrive while a batch runs form the next one.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class RequestBatcher:
    def __init__(self, run: Callable[[list], Awaitable[list]], clients: int, max_wait: float):
        if clients < 1:
            raise ValueError(f"clients must be >= 1, got {clients}")
        self._run = run  # requests -> one reply each, in order
        self.clients, self.max_wait = clients, max_wait
        self._waiting: list[tuple[Any, asyncio.Future]] = []
        self._arrived = asyncio.Event()
        self._complete = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0
        self.largest = 0  # most requests one batch held

    async def submit(self, request) -> Any:
        """The reply to `request`, computed in a batch with whatever else is waiting."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        self._arrived.set()
        if len(self._waiting) >= self.clients:
            self._complete.set()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever())
        return await future

    async def _flush_forever(self) -> None:
        while True:
            await self._arrived.wait()
            if not self._complete.is_set():
                try:
                    await asyncio.wait_for(self._complete.wait(), self.max_wait)
                except asyncio.TimeoutError:
                    pass  # run with those that came
            batch, self._waiting = self._waiting, []
            self._arrived.clear()
            self._complete.clear()
            self.batches += 1
            self.requests += len(batch)
            self.largest = max(self.largest, len(batch))
            try:
                replies = await self._run([request for request, _ in batch])
            except Exception as exc:  # every caller of this batch hears of it; the next batch runs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), reply in zip(batch, replies):
                if not future.done():
                    future.set_result(reply)

    def stats(self) -> dict:
        return {"batches": self.batches, "requests": self.requests, "largest_batch": self.largest}
