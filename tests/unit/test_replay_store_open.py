"""Which Redis a run's durable replay uses, and the check that it answers before anything else
starts: the run's own redis-server (started here through a fake), or the configured URL with
its password from the environment, checked against minimal RESP servers on 127.0.0.1."""
from __future__ import annotations

import socket
import threading

import pytest

import replay.redis_server as redis_server_module
from accord import replay_store as store_module
from accord.config import load_config
from accord.errors import UserError
from accord.replay_store import ReplayStore, check_reachable, open_replay_store
from tests.support.loopback_server import LoopbackServer

SAC = ["env.kind=gym", "env.tasks=[Pendulum-v1]", "learner.algorithm=sac"]


class FakeServer:
    url = "redis://127.0.0.1:7777/0"

    def __init__(self):
        self.stops = 0

    def stop(self):
        self.stops += 1


def test_only_a_sac_run_with_the_redis_backend_has_a_store(tmp_path):
    assert open_replay_store(load_config(None, ["env.kind=gym", "env.tasks=[CartPole-v1]"]), tmp_path) == \
        ReplayStore(None)
    assert open_replay_store(load_config(None, SAC), tmp_path) == ReplayStore(None)


def test_without_a_url_the_run_starts_its_own_server_in_its_directory_and_stops_it_once(tmp_path, monkeypatch):
    started, server = [], FakeServer()
    monkeypatch.setattr(redis_server_module, "start_redis_server", lambda d: started.append(d) or server)
    store = open_replay_store(load_config(None, [*SAC, "replay.backend=redis"]), tmp_path)
    assert started == [tmp_path / "redis"] and store.url == FakeServer.url and store.server is server
    store.close()
    store.close()
    assert server.stops == 1 and store.server is None


def test_a_missing_redis_server_is_a_user_error(tmp_path, monkeypatch):
    def missing(data_dir):
        raise redis_server_module.RedisUnavailable("redis-server not found on PATH")
    monkeypatch.setattr(redis_server_module, "start_redis_server", missing)
    with pytest.raises(UserError, match="^redis-server not found on PATH$"):
        open_replay_store(load_config(None, [*SAC, "replay.backend=redis"]), tmp_path)


def test_a_given_url_gets_the_password_of_its_variable_and_is_checked(tmp_path, monkeypatch):
    checked = []
    monkeypatch.setattr(store_module, "check_reachable", lambda url, env: checked.append((url, env)))
    monkeypatch.setenv("MY_REDIS_PW", "s3cret")
    cfg = load_config(None, [*SAC, "replay.backend=redis", "replay.redis.url=redis://db.internal:6380/2",
                             "replay.redis.password_env=MY_REDIS_PW"])
    store = open_replay_store(cfg, tmp_path)
    assert store == ReplayStore("redis://:s3cret@db.internal:6380/2")
    assert checked == [("redis://:s3cret@db.internal:6380/2", "MY_REDIS_PW")]


class OneReplyServer(LoopbackServer):
    """Answers every RESP command on 127.0.0.1 with the same reply."""

    def __init__(self, reply: bytes):
        self.reply = reply
        super().__init__()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def connected(self, conn):
        threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(self.reply * data.count(b"*"))  # one reply per command sent


def test_a_redis_that_answers_passes_the_check():
    server = OneReplyServer(b"+PONG\r\n")
    try:
        check_reachable(server.url)
    finally:
        server.close()


def test_a_redis_that_wants_a_password_is_refused_with_where_to_give_it():
    server = OneReplyServer(b"-NOAUTH Authentication required.\r\n")
    try:
        with pytest.raises(UserError) as refused:
            check_reachable(server.url.replace("127.0.0.1", ":hidden@127.0.0.1"))
    finally:
        server.close()
    assert str(refused.value) == (
        f"replay.redis.url: cannot use Redis at {server.url}: AuthenticationError: "
        f"Authentication required. (give its password in $ACCORD_REDIS_PASSWORD, or name another variable in "
        f"replay.redis.password_env)")


def test_an_unreachable_redis_is_one_line_without_its_password():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(UserError) as refused:
        check_reachable(f"redis://:hidden@127.0.0.1:{port}/0")
    message = str(refused.value)
    assert message.startswith(f"replay.redis.url: cannot use Redis at redis://127.0.0.1:{port}/0: ConnectionError: ")
    assert "hidden" not in message and "\n" not in message and "password_env" not in message
