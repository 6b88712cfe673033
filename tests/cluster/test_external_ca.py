"""An external root CA (cfssl) with real processes and the stock CLI.

A fake cfssl server on loopback holds its own root (cert + key). `docker swarm ca --rotate --ca-cert <root>
--external-ca protocol=cfssl,url=...` hands the cluster that root without its key: the manager's own
certificate and then every joining worker's certificate are signed by the cfssl server, the rotation ends,
and `docker swarm ca` shows the external root. With the cfssl server gone, a join is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from shoal import ca as CA
from tests.support.fake_cfssl import FakeCfssl
from tests.support.managers import WORKER_JOINED
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import Cluster


@pytest.fixture
def cfssl() -> Iterator[FakeCfssl]:
    f = FakeCfssl()
    try:
        yield f
    finally:
        f.stop()


def signed_for(fake: FakeCfssl) -> list[tuple[str, str]]:
    """(CN, OU) of every sign request the fake received."""
    out = []
    for r in list(fake.requests):
        subj = r.get("subject") or {}
        names = subj.get("names") or [{}]
        out.append((subj.get("CN", ""), names[0].get("OU", "")))
    return out


def node_cert(node: ShoalNode) -> str:
    return (node.data_dir / "certificates" / "swarm-node.crt").read_text()


def test_rotation_to_external_root_then_join_signed_by_cfssl(cluster: Cluster, cfssl: FakeCfssl,
                                                              tmp_path: Path) -> None:
    m = cluster.manager
    old_root = m.docker("swarm", "ca").stdout
    root_file = tmp_path / "external-root.pem"
    root_file.write_text(cfssl.root_pem)
    ext = f"protocol=cfssl,url={cfssl.url}"

    # --- the rotation to the external root (no key given) converges: the CLI waits for it
    cp = m.docker("swarm", "ca", "--rotate", "--ca-cert", str(root_file), "--external-ca", ext, timeout=60)
    swarm = m.api("GET", "/v1.47/swarm")[1]
    assert swarm["RootRotationInProgress"] is False
    assert CA.normalize_pem(swarm["TLSInfo"]["TrustRoot"]) == CA.normalize_pem(cfssl.root_pem)
    assert cp.stdout.strip().endswith(cfssl.root_pem.strip()), cp.stdout
    assert CA.normalize_pem(m.docker("swarm", "ca").stdout) == CA.normalize_pem(cfssl.root_pem)
    assert CA.normalize_pem(old_root) != CA.normalize_pem(cfssl.root_pem)
    ext_cas = swarm["Spec"]["CAConfig"]["ExternalCAs"]
    assert [(e["Protocol"], e["URL"]) for e in ext_cas] == [("cfssl", cfssl.url)], ext_cas
    # the manager's own certificate came from the cfssl server (there is no local key for this root)
    mgr_id = cluster.node_id("mgr")
    assert (mgr_id, "swarm-manager") in signed_for(cfssl), signed_for(cfssl)
    mgr = cluster.node("mgr")
    assert mgr is not None
    assert CA.normalize_pem(mgr["Description"]["TLSInfo"]["TrustRoot"]) == CA.normalize_pem(cfssl.root_pem)

    # --- a worker joining now gets a certificate the cfssl server signed, chaining to the external root
    before = len(cfssl.requests)
    token = cluster.token()
    assert CA.parse_join_token(token)[0] == CA.digest_b36_of_pem(cfssl.root_pem)
    w1 = cluster.add_worker("w1")
    w1_id = cluster.node_id("w1")
    assert (w1_id, "swarm-worker") in signed_for(cfssl)[before:], signed_for(cfssl)
    cert = node_cert(w1)
    assert CA.issuer_root(cert, cfssl.root_pem)
    assert not CA.issuer_root(cert, old_root)
    ident = CA.identity_of(cert)
    assert (ident.node_id, ident.role) == (w1_id, "worker")
    leaf = x509.load_pem_x509_certificate(CA.split_pems(cert)[0].encode())
    assert leaf.issuer.rfc4514_string() == "CN=external-root"
    assert CA.normalize_pem((w1.data_dir / "certificates" / "swarm-root-ca.crt").read_text()) \
        == CA.normalize_pem(cfssl.root_pem)
    w1_node = cluster.node("w1")
    assert w1_node is not None
    assert CA.normalize_pem(w1_node["Description"]["TLSInfo"]["TrustRoot"]) == CA.normalize_pem(cfssl.root_pem)
    assert cluster.node_state("w1") == "ready"

    # --- the cfssl server gone: a new join is refused (nothing signs for the external root), no node left
    cfssl.stop()
    nodes_before = {n["ID"] for n in cluster.nodes()}
    w2 = ShoalNode(cluster.base / "w2", hostname="w2").start()
    cluster.workers["w2"] = w2
    cp = w2.docker("swarm", "join", "--token", token, cluster.addr, check=False, timeout=90)
    assert cp.returncode != 0, cp.stdout
    assert WORKER_JOINED not in cp.stdout
    assert "unable to perform certificate signing request" in cp.stderr, cp.stderr
    assert {n["ID"] for n in cluster.nodes()} == nodes_before
    assert w2.api("GET", "/v1.47/info")[1]["Swarm"]["LocalNodeState"] == "inactive"
    # the joined worker keeps working
    wait_until(lambda: cluster.node_state("w1") == "ready", 10, what="w1 still ready")
