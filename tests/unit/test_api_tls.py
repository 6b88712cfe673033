"""The TCP API: dockerd's TLS flags (a client without a certificate is refused under --tlsverify), dockerd's
warnings for a listener that does not verify clients, and IPv6 loopback ([::1]:PORT). Real daemons."""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from shoal.cli import main
from tests.support.shoal_node import ShoalNode

pytestmark = pytest.mark.timeout(60)

INSECURE = ("Binding to IP address without --tlsverify is insecure and gives root access on this machine to "
            "everyone who has access to your network.")


def _free_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    with socket.socket(family) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(host: str, port: int, ctx: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection = (http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
                                        if ctx is not None else http.client.HTTPConnection(host, port, timeout=10))
    try:
        conn.request("GET", "/v1.41/info")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "::1")
    client = ca.issue_cert("client")
    out = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem",
           "client_cert": tmp_path / "client-cert.pem", "client_key": tmp_path / "client-key.pem"}
    ca.cert_pem.write_to_path(str(out["ca"]))
    out["cert"].write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(out["key"]))
    out["client_cert"].write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(out["client_key"]))
    return out


def test_tlsverify_serves_clients_with_a_certificate_and_refuses_others(tmp_path: Path,
                                                                        pki: dict[str, Path]) -> None:
    port = _free_port()
    node = ShoalNode(tmp_path / "n", extra_args=(
        "--api-tcp", f"127.0.0.1:{port}", "--tlsverify", "--tlscacert", str(pki["ca"]),
        "--tlscert", str(pki["cert"]), "--tlskey", str(pki["key"]))).start()
    try:
        good = ssl.create_default_context(cafile=str(pki["ca"]))
        good.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
        status, body = _get("127.0.0.1", port, good)
        assert status == 200 and b'"Swarm"' in body
        anonymous = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            _get("127.0.0.1", port, anonymous)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            _get("127.0.0.1", port)  # plain HTTP on the TLS port
        log = node.log_path.read_text()
        assert INSECURE not in log
        assert f"API listen on tcp://127.0.0.1:{port} (TLS, client certificates verified)" in log
    finally:
        node.stop()


def test_a_plain_loopback_listener_warns_as_dockerd_and_ipv6_loopback_works(tmp_path: Path) -> None:
    port = _free_port(socket.AF_INET6)
    node = ShoalNode(tmp_path / "n", extra_args=("--api-tcp", f"[::1]:{port}")).start()
    try:
        status, body = _get("::1", port)
        assert status == 200 and b'"Swarm"' in body
        log = node.log_path.read_text()
        assert f"{INSECURE} host=tcp://[::1]:{port}" in log
        assert "Binding to an IP address, even on localhost, can also give access to scripts run in a browser." \
               in log
        assert f"API listen on tcp://[::1]:{port} (plain HTTP, no TLS)" in log
    finally:
        node.stop()


@pytest.mark.parametrize("args, needle", [
    (["--api-tcp", "0.0.0.0:2375"], "only allowed on loopback"),
    (["--api-tcp", "192.0.2.1:2375", "--tls"], "needs --tlsverify"),
    (["--api-tcp", "::1:2375"], "in brackets"),
    (["--api-tcp", "127.0.0.1:notaport"], "expected HOST:PORT"),
    (["--tlsverify"], "apply to --api-tcp"),
])
def test_unsafe_or_malformed_tcp_listeners_are_refused_before_anything_starts(tmp_path: Path, args: list[str],
                                                                              needle: str) -> None:
    r = CliRunner().invoke(main, ["daemon", "--data-dir", str(tmp_path / "d"), "--api-socket",
                                  str(tmp_path / "s.sock"), "--executor", "process", *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert not (tmp_path / "d").exists()


def test_missing_tls_files_are_a_usage_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["daemon", "--data-dir", str(tmp_path / "d"), "--api-socket",
                                  str(tmp_path / "s.sock"), "--api-tcp", "127.0.0.1:1", "--tlsverify",
                                  "--tlscacert", str(tmp_path / "none.pem"), "--tlscert", str(tmp_path / "c.pem"),
                                  "--tlskey", str(tmp_path / "k.pem")])
    assert r.exit_code == 2 and "could not load the TLS files" in r.output, r.output
