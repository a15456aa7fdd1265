"""The ingestion server's transport settings, with fake replay shards (no Ray) and real gRPC on
the loopback: a message over `max_message_bytes` is refused by grpc, IPv6 hosts bind, and a TLS
server serves TLS clients. (`max_streams` is held by tests/integration/test_grpc_ingest_hostile.py.)"""
from __future__ import annotations

import subprocess

import grpc
import pytest

from ingest.client import IngestClient
from ingest.codec import ChunkSchema
from ingest.server import IngestServer
from tests.unit.test_ingest_server import SPEC, TOKEN, FakeShard, fetch_from, rows


def _server(**kwargs) -> IngestServer:
    log = []
    return IngestServer(ChunkSchema.of(SPEC, 3), ["a", "b", "c"], [FakeShard(0, log)], [100], TOKEN,
                        fetch=fetch_from(log), **kwargs)


def test_a_message_over_max_message_bytes_is_refused_by_grpc():
    server = _server(max_message_bytes=2000)
    server.start()
    try:
        with IngestClient(server.address, TOKEN) as client:
            assert client.send(**rows(10)) == 10  # about 400 bytes
        big = IngestClient(server.address, TOKEN)
        with pytest.raises(grpc.RpcError) as refused:
            big.send(**rows(100))  # about 4,000 bytes
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        big.channel.close()
    finally:
        server.stop(0)


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_binds_in_brackets(host):
    server = _server(host=host)
    try:
        assert server.port > 0 and server.address == f"{host}:{server.port}"
    finally:
        server.stop(0)


def test_a_tls_server_serves_a_tls_client(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    cert, key = (tmp_path / "cert.pem").read_bytes(), (tmp_path / "key.pem").read_bytes()
    server = _server(tls=(key, cert))
    server.start()
    try:
        with IngestClient(server.address, TOKEN, root_certificates=cert) as client:
            assert list(client.describe().tasks) == ["a", "b", "c"]
            assert client.send(**rows(4)) == 4
    finally:
        server.stop(0)
