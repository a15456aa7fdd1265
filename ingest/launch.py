"""Starting the ingestion server for a run (`replay.grpc.port` set): its token, TLS and files.

The token is the environment variable `replay.grpc.token_env` when it is set (a producer fleet
that already holds one); otherwise a fresh 256-bit token per run start, written to
RUN_DIR/ingest_token with mode 0600 so only the run's user can read it. RUN_DIR/ingest_address
holds `host:port`, the port the server actually got (`port: 0` picks a free one).
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from ingest.codec import ChunkSchema
from ingest.server import IngestServer

TOKEN_FILE, ADDRESS_FILE = "ingest_token", "ingest_address"


def run_token(token_env: str, run_dir: Path) -> tuple[str, str]:
    """(token, where it comes from)."""
    token = os.environ.get(token_env, "")
    if token:
        return token, f"${token_env}"
    token = secrets.token_urlsafe(32)
    path = run_dir / TOKEN_FILE
    path.unlink(missing_ok=True)  # a resumed run's old file: O_CREAT keeps an existing file's mode
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, str(path)


def start_ingest(cfg, spec, shards: list, run_dir: Path, log=print) -> IngestServer:
    """The server in front of the run's replay `shards`, listening; says where on `log`."""
    from actors.rollout import env_options
    from replay.sharding import checked_shard_settings

    grpc_cfg = cfg.replay.grpc
    token, token_source = run_token(grpc_cfg.token_env, run_dir)
    tls = None
    if grpc_cfg.tls_cert is not None:
        tls = (Path(grpc_cfg.tls_key).read_bytes(), Path(grpc_cfg.tls_cert).read_bytes())
    server = IngestServer(
        ChunkSchema.of(spec, len(cfg.env.tasks), env_options(cfg).get("task_one_hot", 0)), cfg.env.tasks, shards,
        [s["max_insert"] for s in checked_shard_settings(cfg)], token, grpc_cfg.host,
        grpc_cfg.port, grpc_cfg.max_message_bytes, grpc_cfg.max_streams, tls).start()
    (run_dir / ADDRESS_FILE).write_text(server.address + "\n")
    log(f"gRPC ingestion on {server.address} ({'TLS' if tls else 'plaintext, loopback'}); "
        f"bearer token in {token_source}")
    return server


class LiveMetrics(Mapping):
    """The driver's per-row facts plus the server's counters as they are when a row is written
    (the training loop spreads this mapping into every metric row)."""

    def __init__(self, static: dict, server: IngestServer):
        self.static, self.server = static, server

    def _now(self) -> dict:
        return {**self.static, **self.server.metrics()}

    def __getitem__(self, key):
        return self._now()[key]

    def __iter__(self):
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())
