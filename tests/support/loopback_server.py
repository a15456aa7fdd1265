"""A TCP server on 127.0.0.1 for tests that stand in for a service: it accepts connections on
a thread and hands each to `connected(conn)`, which subclasses define."""
from __future__ import annotations

import socket
import threading


class LoopbackServer:
    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:     # closed
                return
            self.connected(conn)

    def connected(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self):
        self.sock.close()
