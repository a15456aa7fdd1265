"""accord's own redis-server: the durable replay's store when the config names no Redis.

Secure and durable by default: bound to 127.0.0.1 on a free port, a password generated at every
start (`requirepass`), the append-only file fsynced every second (`appendfsync everysec`: an
insert the server acknowledged is lost only if the server itself dies within about a second
of it), no RDB snapshots. The data directory is RUN_DIR/redis, so `accord train --resume
RUN_DIR` restarts the server on the same append-only file and the replay comes back.

The configuration, password included, reaches the server on its stdin (`redis-server -`),
never on a command line that `ps` would show.
"""
from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 15.0


class RedisUnavailable(RuntimeError):
    """No Redis to use: redis-server is not installed, or the given one does not answer."""


@dataclass
class RedisServer:
    """A running redis-server started by `start_redis_server`."""
    process: subprocess.Popen
    port: int
    password: str
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """SIGTERM: redis-server fsyncs the append-only file and exits."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_config(data_dir: Path, port: int, password: str) -> str:
    lines = {
        "bind": "127.0.0.1", "port": str(port), "protected-mode": "yes",
        "requirepass": password, "dir": str(data_dir),
        "appendonly": "yes", "appendfsync": "everysec",
        # AOF alone: an RDB snapshot would fork a copy of the whole table every few minutes.
        "save": '""',
        "logfile": str(data_dir / "redis.log"), "daemonize": "no",
    }
    return "".join(f"{k} {v}\n" for k, v in lines.items())


def start_redis_server(data_dir: Path, executable: str = "redis-server") -> RedisServer:
    """Start redis-server on `data_dir` (created if missing) and wait until it answers; an
    append-only file already there is loaded first. `RedisUnavailable` when redis-server is missing."""
    binary = shutil.which(executable)
    if binary is None:
        raise RedisUnavailable(f"replay.backend: redis needs {executable} on this machine (Debian: "
                        f"apt-get install redis-server, or `make system-deps`), or set "
                        f"replay.redis.url to a running Redis")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # a free port can be taken by someone else before we bind it
        port, password = _free_port(), secrets.token_urlsafe(32)
        process = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, close_fds=True,
                                   # Ctrl-C reaches the terminal's process group; the server must
                                   # outlive it until the driver's last inserts are in.
                                   start_new_session=True)
        process.stdin.write(server_config(data_dir, port, password).encode())
        process.stdin.close()
        server = RedisServer(process, port, password, data_dir)
        try:
            ready = _wait_ready(server)
        except BaseException:  # Ctrl-C while it loads, a broken client: no server left behind
            server.stop()
            raise
        if ready:
            return server
        server.stop()
    log = data_dir / "redis.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    raise RuntimeError(f"redis-server on {data_dir} did not start: {tail[0] if tail else 'no log'}")


def _wait_ready(server: RedisServer) -> bool:
    """True once the server answers PING with its data loaded; False if it exited."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port, password=server.password,
                         socket_timeout=2)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            try:
                if client.ping():  # answers LOADING (an error) while it replays the AOF
                    return True
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                time.sleep(0.05)
        return False
    finally:
        client.close()
