"""`docker swarm ca --rotate` with real processes: a manager and two workers, a service running throughout.

While one worker is frozen (SIGSTOP) the rotation cannot end (RootRotationInProgress stays true); thawed,
that worker reconnects with its old certificate, trusting only the old root, and still talks to the manager
(whose certificate now comes from the new root, presented with the cross-signed intermediate); told by its
heartbeat to renew, it moves to the new root and the rotation ends. Then every node's certificate chains to
the new root, the old root is gone from every trust store, and the old root's certificates are refused.
"""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
from cryptography import x509

from shoal import ca as CA
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg
from shoal.rpc.client import CHANNEL_OPTIONS, fetch_root_unverified
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import SLEEP, Cluster


def creds_of(node: ShoalNode) -> tuple[str, str, str]:
    d = node.data_dir / "certificates"
    return ((d / "swarm-node.key").read_text(), (d / "swarm-node.crt").read_text(),
            (d / "swarm-root-ca.crt").read_text())


def issued_by(cert_pem: str, root_pem: str) -> bool:
    return bool(CA.issuer_root(cert_pem, root_pem))


def heartbeat_code(secure_addr: str, key: str, cert: str, roots: str) -> grpc.StatusCode:
    """The status of a Heartbeat with these credentials: OK (or NOT_FOUND without a session) means TLS and the
    per-call checks let it through; UNAVAILABLE means the handshake failed."""

    async def go() -> grpc.StatusCode:
        creds = grpc.ssl_channel_credentials(roots.encode(), key.encode(), cert.encode())
        async with grpc.aio.secure_channel(secure_addr, creds, options=CHANNEL_OPTIONS) as ch:
            try:
                await pbg.DispatcherStub(ch).Heartbeat(pb.HeartbeatRequest(), timeout=5)
            except grpc.aio.AioRpcError as e:
                return e.code()
        return grpc.StatusCode.OK

    return asyncio.run(go())


PASSED = (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)


def secure_addr(addr: str, roots: str) -> str:
    async def go() -> str:
        async with grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(roots.encode()),
                                           options=CHANNEL_OPTIONS) as ch:
            return str((await pbg.CAStub(ch).GetRootCACertificate(pb.RootCARequest(), timeout=5)).secure_addr)

    return asyncio.run(go())


def test_root_rotation_moves_every_node_without_downtime(cluster: Cluster) -> None:
    m = cluster.manager
    w1 = cluster.add_worker("w1")
    w2 = cluster.add_worker("w2")
    m.docker("service", "create", "--detach", "--name", "r", "--replicas", "2", "--constraint",
             "node.hostname==w1", "busybox", *SLEEP)
    wait_until(lambda: cluster.placement("r") == {"w1": 2}, 30, what="r running on w1")
    pids = w1.command_pids()
    tasks = {t["ID"] for t in cluster.running("r")}

    old_root = m.docker("swarm", "ca").stdout
    assert issued_by(creds_of(w1)[1], old_root) and creds_of(w2)[2] == old_root
    old_token = cluster.token()
    old_w1 = creds_of(w1)
    sec = secure_addr(cluster.addr, old_root)
    assert heartbeat_code(sec, *old_w1) in PASSED  # control: the old creds work now

    # --- w2 frozen: the rotation starts but cannot end while w2 has not moved
    assert w2.proc is not None
    os.kill(w2.proc.pid, signal.SIGSTOP)
    m.docker("swarm", "ca", "--rotate", "--detach")
    swarm = m.api("GET", "/v1.47/swarm")[1]
    assert swarm["RootRotationInProgress"] is True
    new_root = swarm["TLSInfo"]["TrustRoot"]
    assert new_root != old_root
    # w1 moves (told by its heartbeat), trusting old+new for now; its old certificate still works meanwhile
    wait_until(lambda: issued_by(creds_of(w1)[1], new_root), 30, what="w1 renewed from the new root")
    assert creds_of(w1)[2] == old_root + new_root
    wait_until(lambda: (cluster.node("w1") or {})["Description"]["TLSInfo"]["TrustRoot"] == new_root, 10,
               what="w1's TLSInfo to show the new root")
    assert heartbeat_code(sec, *old_w1) in PASSED
    assert m.api("GET", "/v1.47/swarm")[1]["RootRotationInProgress"] is True  # w2 has not moved
    assert cluster.token() == old_token  # tokens pin the old root until the end

    # --- w2 thawed: it talks to the manager with its old certificate and old trust, then moves
    os.kill(w2.proc.pid, signal.SIGCONT)
    wait_until(lambda: not m.api("GET", "/v1.47/swarm")[1]["RootRotationInProgress"], 60,
               what="the rotation to end")
    assert m.docker("swarm", "ca").stdout == new_root
    assert fetch_root_unverified(cluster.addr) == new_root
    for w in (w1, w2):
        wait_until(lambda w=w: creds_of(w)[2] == new_root, 30, what=f"{w.hostname} to trust only the new root")
        cert = creds_of(w)[1]
        assert issued_by(cert, new_root) and not issued_by(cert, old_root)
    for n in cluster.nodes():
        assert n["Description"]["TLSInfo"]["TrustRoot"] == new_root, n["Description"]["Hostname"]
    # join tokens were made again for the new root's digest
    new_token = cluster.token()
    assert new_token != old_token and CA.parse_join_token(new_token)[0] == CA.digest_b36_of_pem(new_root)

    # --- the old root's certificates are refused; the new ones pass
    sec = secure_addr(cluster.addr, new_root)
    assert heartbeat_code(sec, *old_w1) == grpc.StatusCode.UNAVAILABLE
    assert heartbeat_code(sec, old_w1[0], old_w1[1], old_root + new_root) == grpc.StatusCode.UNAVAILABLE
    assert heartbeat_code(sec, *creds_of(w1)) in PASSED

    # --- the service ran throughout: same tasks, same processes; and the workers still get work
    assert {t["ID"] for t in cluster.running("r")} == tasks
    assert w1.command_pids() == pids
    for w in ("w1", "w2"):
        assert cluster.node_state(w) == "ready"
    m.docker("service", "scale", "--detach", "r=3")
    wait_until(lambda: cluster.placement("r") == {"w1": 3}, 30, what="r scaled after the rotation")

    # --- the stock CLI waits for convergence (its progress bars) and prints the new root
    cp = m.docker("swarm", "ca", "--rotate", timeout=90)
    third = m.api("GET", "/v1.47/swarm")[1]
    assert not third["RootRotationInProgress"]
    assert cp.stdout.strip().endswith(third["TLSInfo"]["TrustRoot"].strip()) and third["TLSInfo"]["TrustRoot"] \
        != new_root
    assert "desired root digest: sha256:" in cp.stdout, cp.stdout
    assert x509.load_pem_x509_certificate(third["TLSInfo"]["TrustRoot"].encode()).subject.rfc4514_string() \
        == "CN=swarm-ca"
