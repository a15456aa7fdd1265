"""An in-memory stand-in for the few `redis.Redis` commands the replay table uses (HSET with a
mapping, HGETALL, SETRANGE, GET, pipelines), with Redis's own semantics where the table relies
on them: values come back as bytes, SETRANGE past a string's end pads it with zero bytes, a
missing key reads as None or {}, and a transaction's commands apply all together at EXEC or not
at all. For unit tests only; the integration tests run a real redis-server."""
from __future__ import annotations

import redis


class FakeRedis:
    def __init__(self):
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.fail_next_exec = False     # the next EXEC raises, as a dropped connection would
        self.transactions = 0

    @staticmethod
    def _bytes(value) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(key, {}))

    def get(self, key: str) -> bytes | None:
        return self.strings.get(key)

    def _hset(self, key: str, mapping: dict) -> None:
        self.hashes.setdefault(key, {}).update(
            {self._bytes(k): self._bytes(v) for k, v in mapping.items()})

    def _setrange(self, key: str, offset: int, value: bytes) -> None:
        old = self.strings.get(key, b"").ljust(offset, b"\0")
        self.strings[key] = old[:offset] + value + old[offset + len(value):]

    def pipeline(self, transaction: bool = True) -> "FakePipeline":
        return FakePipeline(self, transaction)


class FakePipeline:
    def __init__(self, client: FakeRedis, transaction: bool):
        self.client, self.transaction, self.queued = client, transaction, []

    def hset(self, key: str, mapping: dict) -> None:
        self.queued.append(("hset", key, mapping))

    def setrange(self, key: str, offset: int, value: bytes) -> None:
        self.queued.append(("setrange", key, offset, value))

    def get(self, key: str) -> None:
        self.queued.append(("get", key))

    def execute(self) -> list:
        if self.client.fail_next_exec:
            self.client.fail_next_exec = False
            raise redis.ConnectionError("connection dropped (fake)")
        self.client.transactions += self.transaction
        replies = []
        for command, key, *args in self.queued:
            if command == "get":
                replies.append(self.client.get(key))
            else:
                getattr(self.client, f"_{command}")(key, *args)
                replies.append(True)
        self.queued = []
        return replies

    def reset(self) -> None:
        self.queued = []
