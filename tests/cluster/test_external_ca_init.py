"""`docker swarm init --external-ca` with an external root placed in the data dir beforehand.

The fake cfssl server's root certificate (no key) is written to `<data-dir>/certificates/swarm-root-ca.crt`
of a stopped-swarm (inactive) node; `swarm init --external-ca protocol=cfssl,url=...,cacert=<root>` then makes it
the cluster's root: the manager's own certificate and a joining worker's come from the cfssl server. Without a
reachable external CA for that root, the init is refused with swarmkit's text and nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from shoal import ca as CA
from tests.cluster.conftest import _require_cli
from tests.cluster.test_external_ca import node_cert, signed_for
from tests.support.fake_cfssl import FakeCfssl
from tests.support.managers import free_port
from tests.support.workers import Cluster

UNREACHABLE = "there must be at least one valid, reachable external CA corresponding to the desired CA certificate"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    _require_cli()
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def cfssl() -> Iterator[FakeCfssl]:
    f = FakeCfssl()
    try:
        yield f
    finally:
        f.stop()


def test_init_with_external_root_in_data_dir(cluster: Cluster, cfssl: FakeCfssl, tmp_path: Path) -> None:
    m = cluster.manager.start()
    certs = m.data_dir / "certificates"
    certs.mkdir(parents=True)
    (certs / "swarm-root-ca.crt").write_text(cfssl.root_pem)
    root_file = tmp_path / "external-root.pem"
    root_file.write_text(cfssl.root_pem)
    init = ("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", cluster.addr, "--availability", "drain")

    def refused(*extra: str) -> None:
        cp = m.docker(*init, *extra, check=False, timeout=60)
        assert cp.returncode != 0, cp.stdout
        assert UNREACHABLE in cp.stderr, cp.stderr
        assert m.api("GET", "/v1.47/info")[1]["Swarm"]["LocalNodeState"] == "inactive"
        # nothing half-done: no membership, no store; the placed root stays for the next attempt
        assert sorted(p.name for p in m.data_dir.iterdir()) == ["certificates"], list(m.data_dir.iterdir())
        assert [p.name for p in certs.iterdir()] == ["swarm-root-ca.crt"]

    # --- refused: no external CA at all, and one that nobody listens on
    refused()
    refused("--external-ca", f"protocol=cfssl,url=https://127.0.0.1:{free_port()}/api/v1/cfssl/sign")
    assert cfssl.requests == []

    # --- the init with the fake cfssl server: the placed root is the cluster's, with no key
    m.docker(*init, "--external-ca", f"protocol=cfssl,url={cfssl.url},cacert={root_file}", timeout=60)
    assert CA.normalize_pem(m.docker("swarm", "ca").stdout) == CA.normalize_pem(cfssl.root_pem)
    swarm = m.api("GET", "/v1.47/swarm")[1]
    assert CA.normalize_pem(swarm["TLSInfo"]["TrustRoot"]) == CA.normalize_pem(cfssl.root_pem)
    assert swarm["RootRotationInProgress"] is False
    ext = swarm["Spec"]["CAConfig"]["ExternalCAs"]
    assert [(e["Protocol"], e["URL"]) for e in ext] == [("cfssl", cfssl.url)], ext
    assert CA.normalize_pem(ext[0]["CACert"]) == CA.normalize_pem(cfssl.root_pem)
    mgr_id = cluster.node_id("mgr")
    assert (mgr_id, "swarm-manager") in signed_for(cfssl), signed_for(cfssl)
    assert CA.parse_join_token(cluster.token())[0] == CA.digest_b36_of_pem(cfssl.root_pem)

    # --- a worker joins: its certificate is signed by the cfssl server and chains to the external root
    before = len(cfssl.requests)
    w1 = cluster.add_worker("w1")
    w1_id = cluster.node_id("w1")
    assert (w1_id, "swarm-worker") in signed_for(cfssl)[before:], signed_for(cfssl)
    cert = node_cert(w1)
    assert CA.issuer_root(cert, cfssl.root_pem)
    leaf = x509.load_pem_x509_certificate(CA.split_pems(cert)[0].encode())
    assert leaf.issuer.rfc4514_string() == "CN=external-root"
    assert (CA.identity_of(cert).node_id, CA.identity_of(cert).role) == (w1_id, "worker")
    assert CA.normalize_pem((w1.data_dir / "certificates" / "swarm-root-ca.crt").read_text()) \
        == CA.normalize_pem(cfssl.root_pem)
    assert cluster.node_state("w1") == "ready"
