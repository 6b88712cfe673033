"""External root CA through cfssl (shoal/ca.py): swarmkit's sign request, the URL filter, a fake cfssl server
on loopback signing node certificates, swarmkit's refusal when no external CA is reachable."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from shoal import ca as CA
from shoal.errors import ShoalError
from shoal.model.objects import CAConfig, ExternalCA
from tests.support.fake_cfssl import FakeCfssl

NOW = 1_800_000_000.0


@pytest.fixture
def cfssl() -> Iterator[FakeCfssl]:
    f = FakeCfssl()
    try:
        yield f
    finally:
        f.stop()


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"https://127.0.0.1:{port}/api/v1/cfssl/sign"


def test_url_filter_follows_the_desired_root() -> None:
    a, b = CA.create_root_ca(NOW), CA.create_root_ca(NOW)
    exts = (ExternalCA(url="https://x/1"), ExternalCA(url="https://x/2", ca_cert=b.ca_cert_pem),
            ExternalCA(protocol="other", url="https://x/3"))
    assert CA.external_ca_urls(exts, a.ca_cert_pem, a.ca_cert_pem) == ["https://x/1"]  # no cert: the current root
    assert CA.external_ca_urls(exts, b.ca_cert_pem, a.ca_cert_pem) == ["https://x/2"]


def test_sign_request_as_swarmkit_prepares_it() -> None:
    req = CA.prepare_sign_request("CSR", "node1", CA.MANAGER_OU, "cluster1")
    assert req == {"hosts": ["swarm-manager", "node1", "swarm-ca"], "certificate_request": "CSR",
                   "subject": {"CN": "node1", "names": [{"OU": "swarm-manager", "O": "cluster1"}]}}


def test_node_certificate_signed_through_cfssl(cfssl: FakeCfssl) -> None:
    root = CA.root_of(cfssl.root_pem)  # the external root: no key here
    cfg = CAConfig(external_cas=(ExternalCA(url=cfssl.url),))
    cert = CA.sign_node_cert(root, cfg, CA.make_csr(CA.new_key_pem()), "node1", "worker", "clus1", NOW, 3600)
    assert CA.verify_issued_by(cert, root)
    ident = CA.identity_of(cert)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("node1", "worker", "clus1")
    assert len(cfssl.requests) == 1 and cfssl.requests[0]["subject"]["CN"] == "node1"
    # the first URL that answers wins
    cfg2 = CAConfig(external_cas=(ExternalCA(url=dead_url()), ExternalCA(url=cfssl.url)))
    CA.sign_node_cert(root, cfg2, CA.make_csr(CA.new_key_pem()), "node2", "manager", "clus1", NOW, 3600)
    assert len(cfssl.requests) == 2
    # without external CAs the local key is needed
    with pytest.raises(ShoalError, match="no signing key"):
        CA.sign_node_cert(root, CAConfig(), CA.make_csr(CA.new_key_pem()), "n", "worker", "c", NOW, 3600)


def test_external_ca_errors(cfssl: FakeCfssl) -> None:
    root = CA.root_of(cfssl.root_pem)
    csr = CA.make_csr(CA.new_key_pem())
    with pytest.raises(CA.ExternalCAError, match="unable to perform certificate signing request") as e:
        CA.sign_node_cert(root, CAConfig(external_cas=(ExternalCA(url=dead_url()),)), csr, "n", "worker", "c",
                          NOW, 3600)
    assert e.value.recoverable
    cfssl.fail_with = (200, {"success": False, "result": None, "errors": [{"code": 1, "message": "nope"}]})
    with pytest.raises(CA.ExternalCAError, match="response errors") as e:
        CA.sign_node_cert(root, CAConfig(external_cas=(ExternalCA(url=cfssl.url),)), csr, "n", "worker", "c",
                          NOW, 3600)
    assert not e.value.recoverable
    cfssl.fail_with = (500, {"success": False})
    with pytest.raises(CA.ExternalCAError, match="unexpected status code in CSR response: 500"):
        CA.sign_node_cert(root, CAConfig(external_cas=(ExternalCA(url=cfssl.url),)), csr, "n", "worker", "c",
                          NOW, 3600)


def test_external_ca_of_another_root_is_refused(cfssl: FakeCfssl) -> None:
    other = CA.create_root_ca(NOW)  # the cluster's root is not the one the external CA serves TLS and signs with
    cfg = CAConfig(external_cas=(ExternalCA(url=cfssl.url, ca_cert=other.ca_cert_pem),))
    with pytest.raises(CA.ExternalCAError, match="CERTIFICATE_VERIFY_FAILED"):
        CA.sign_node_cert(other, cfg, CA.make_csr(CA.new_key_pem()), "n", "worker", "c", NOW, 3600)


def test_rotation_to_an_external_root(cfssl: FakeCfssl) -> None:
    import time

    now = time.time()
    old = CA.create_root_ca(now)
    # no reachable external CA for the keyless root: swarmkit's refusal
    for exts in ((), (ExternalCA(url=dead_url(), ca_cert=cfssl.root_pem),),
                 (ExternalCA(url=cfssl.url.replace("https", "http"), ca_cert=cfssl.root_pem),),  # swarmkit: https only
                 (ExternalCA(url=cfssl.url),)):  # no CA cert: stands for the current root, not the desired one
        with pytest.raises(ShoalError, match="there must be at least one valid, reachable external CA "
                                              "corresponding to the desired CA certificate"):
            CA.plan_ca_update(old, 0, cfssl.root_pem, "", now, exts)
    exts = (ExternalCA(url=cfssl.url, ca_cert=cfssl.root_pem),)
    rot = CA.plan_ca_update(old, 0, cfssl.root_pem, "", now, exts)
    assert CA.rotation_in_progress(rot) and not rot.rotation_ca_key_pem
    # certificates now come from the external root through cfssl and chain to the old root via the cross-signed one
    cert = CA.sign_node_cert(rot, CAConfig(external_cas=exts), CA.make_csr(CA.new_key_pem()), "n", "worker", "c",
                             now, 3600)
    assert CA.issuer_root(cert, cfssl.root_pem)
    assert CA.chains_to(cert, CA.signing_chain(rot), old.ca_cert_pem)
