"""`redis_client` rides out a short outage: a connection that drops is retried, four times, and
the fifth drop in a row fails the command. Checked against a minimal RESP server on 127.0.0.1
that closes its first connections unanswered and answers the rest (+PONG to PING, +OK to
anything else)."""
from __future__ import annotations

import threading

import pytest
import redis

from replay.redis_table import redis_client
from tests.support.loopback_server import LoopbackServer


class FlakyRespServer(LoopbackServer):
    """Closes the first `drops` connections at once; then parses RESP arrays and answers."""

    def __init__(self, drops: int):
        self.drops, self.connections, self.commands = drops, 0, []
        super().__init__()

    def connected(self, conn):
        self.connections += 1
        if self.connections <= self.drops:
            conn.close()
            return
        threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        buffer = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while (parsed := _parse_command(buffer)) is not None:
                    command, buffer = parsed
                    self.commands.append(command)
                    conn.sendall(b"+PONG\r\n" if command[0].upper() == b"PING" else b"+OK\r\n")


def _parse_command(buffer: bytes):
    """One RESP array of bulk strings from the front of `buffer`: (parts, rest), or None."""
    if not buffer.startswith(b"*") or b"\r\n" not in buffer:
        return None
    head, rest = buffer.split(b"\r\n", 1)
    parts = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line[1:])
        if len(rest) < size + 2:
            return None
        parts.append(rest[:size])
        rest = rest[size + 2:]
    return parts, rest


@pytest.fixture
def flaky():
    servers = []

    def start(drops):
        servers.append(FlakyRespServer(drops))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_the_client_connects_where_its_url_says():
    server_ok = FlakyRespServer(drops=0)
    try:
        client = redis_client(f"redis://127.0.0.1:{server_ok.port}/3")
        assert client.ping() is True
        assert [b"SELECT", b"3"] in server_ok.commands
    finally:
        server_ok.close()


def test_four_dropped_connections_in_a_row_are_ridden_out(flaky):
    server = flaky(drops=4)
    assert redis_client(f"redis://127.0.0.1:{server.port}/0").ping() is True
    assert server.connections == 5


def test_the_fifth_drop_in_a_row_fails_the_command(flaky):
    server = flaky(drops=5)
    with pytest.raises(redis.ConnectionError):
        redis_client(f"redis://127.0.0.1:{server.port}/0").ping()
    assert server.connections == 5
