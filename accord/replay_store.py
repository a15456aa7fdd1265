"""The Redis behind a run's durable replay (`replay.backend: redis`), ready before Ray starts.

`open_replay_store` gives the driver the URL the replay shards write to: `replay.redis.url`
(its password from `replay.redis.password_env` when the URL has none), or, without one, a
redis-server of the run's own (replay/redis_server.py) on RUN_DIR/redis, where a resumed run
finds the append-only file of the run it continues. Either way the server must answer before
anything else starts: a missing redis-server or an unreachable URL is one line, exit 2.
`ReplayStore.close` stops the run's own server (its AOF stays, for `--resume`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from accord.errors import UserError


@dataclass
class ReplayStore:
    url: str | None  # None: the replay stays in memory
    server: object | None = None  # the run's own RedisServer, stopped by close()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def open_replay_store(cfg, run_dir: Path) -> ReplayStore:
    if cfg.learner.algorithm != "sac" or cfg.replay.backend != "redis":
        return ReplayStore(None)
    from replay.redis_server import RedisUnavailable, start_redis_server

    if cfg.replay.redis.url is None:
        try:
            server = start_redis_server(Path(run_dir) / "redis")
        except RedisUnavailable as exc:
            raise UserError(str(exc)) from None
        return ReplayStore(server.url, server)
    url = with_password(cfg.replay.redis.url, os.environ.get(cfg.replay.redis.password_env))
    check_reachable(url, cfg.replay.redis.password_env)
    return ReplayStore(url)


def with_password(url: str, password: str | None) -> str:
    """`url` carrying `password` unless it has one already (unix sockets take it as a query)."""
    if not password:
        return url
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        query.setdefault("password", password)
        return _unsplit(parts._replace(query=urlencode(query)))
    if parts.password:
        return url
    # The user part stays as the URL wrote it (already escaped: quoting it again would turn
    # a %40 into %2540); only the password is escaped here.
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def redacted(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)])
    return _unsplit(parts._replace(netloc=netloc, query=query))


def _unsplit(parts) -> str:
    """`urlunsplit`, but a unix socket's URL keeps its `//`: urllib writes `unix:/path` (it
    knows no unix scheme), which redis-py refuses."""
    url = urlunsplit(parts)
    if parts.scheme == "unix" and not url.startswith("unix://"):
        url = "unix://" + url[len("unix:"):]
    return url


def check_reachable(url: str, password_env: str = "ACCORD_REDIS_PASSWORD") -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        hint = (f" (give its password in ${password_env}, or name another variable in "
                f"replay.redis.password_env)"
                if isinstance(exc, redis.AuthenticationError) else "")
        raise UserError(f"replay.redis.url: cannot use Redis at {redacted(url)}: "
                        f"{type(exc).__name__}: {' '.join(str(exc).split())}{hint}") from None
    finally:
        client.close()
