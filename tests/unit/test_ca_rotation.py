"""Root CA rotation planning (shoal/ca.py): generated and user-given roots, swarmkit's refusals, chains."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal import ca as CA
from shoal.errors import ShoalError

NOW = 1_800_000_000.0


def issue(root: object) -> str:
    return CA.issue_node_cert(root, CA.make_csr(CA.new_key_pem()), "n1", "worker", "c1", NOW, 3600)  # type: ignore[arg-type]


def user_root(days: int = 3650, ca: bool = True) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my-root")])
    start = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def test_forced_rotation_cross_signs_and_finishes() -> None:
    old = CA.create_root_ca(NOW)
    assert CA.plan_ca_update(old, 0, "", "", NOW) is old  # nothing asked
    rot = CA.plan_ca_update(old, 1, "", "", NOW)
    assert CA.rotation_in_progress(rot) and rot.last_forced_rotation == 1
    assert CA.trust_bundle(rot) == old.ca_cert_pem + rot.rotation_ca_cert_pem
    leaf = issue(rot)
    # issued by the next root; verifiable from the old root only through the cross-signed intermediate
    assert CA.issuer_root(leaf, rot.rotation_ca_cert_pem) and not CA.issuer_root(leaf, old.ca_cert_pem)
    assert CA.chains_to(leaf, CA.signing_chain(rot), old.ca_cert_pem)
    assert not CA.chains_to(leaf, "", old.ca_cert_pem)
    done = CA.finish_rotation(rot)
    assert done.ca_cert_pem == rot.rotation_ca_cert_pem and not CA.rotation_in_progress(done)
    assert done.cert_hash and CA.digest_b36_of_pem(done.ca_cert_pem) == CA.ca_digest_b36(done)
    assert CA.issuer_root(leaf, done.ca_cert_pem)
    # the same ForceRotate again changes nothing
    assert CA.plan_ca_update(done, 1, "", "", NOW) is done


def test_user_given_root() -> None:
    old = CA.create_root_ca(NOW)
    cert, key = user_root()
    rot = CA.plan_ca_update(old, 0, cert, key, NOW)
    assert CA.normalize_pem(rot.rotation_ca_cert_pem) == CA.normalize_pem(cert)
    leaf = issue(rot)
    assert CA.issuer_root(leaf, cert) and CA.chains_to(leaf, CA.signing_chain(rot), old.ca_cert_pem)
    # the spec's signing cert and key are consumed into the root CA, never kept in the spec
    from shoal.model.objects import CAConfig, Cluster, SwarmSpec

    spec = SwarmSpec(ca_config=CAConfig(signing_ca_cert=cert, signing_ca_key=key))
    new_spec, root = CA.apply_ca_spec(Cluster(id="c1", root_ca=old), spec, NOW)
    assert not new_spec.ca_config.signing_ca_cert and not new_spec.ca_config.signing_ca_key
    assert root.rotation_ca_key_pem
    # asking for the current root aborts the rotation
    back = CA.plan_ca_update(rot, 0, old.ca_cert_pem, old.ca_key_pem, NOW)
    assert not CA.rotation_in_progress(back) and back.ca_cert_pem == old.ca_cert_pem


@pytest.mark.parametrize(("make", "message"), [
    (lambda c, k, o: (c, ""), "there must be at least one valid, reachable external CA corresponding to the "
                              "desired CA certificate"),
    (lambda c, k, o: ("", k), "if a signing CA key is provided, the signing CA cert must also be provided"),
    (lambda c, k, o: (c, CA.new_key_pem()), "certificate key mismatch"),
    (lambda c, k, o: (c + c, k), "the desired CA certificate cannot contain multiple certificates"),
    (lambda c, k, o: (user_root(days=30)[0], k), "CA certificate expires too soon"),
    (lambda c, k, o: (user_root(ca=False)[0], k), "the certificate is not a CA"),
    (lambda c, k, o: (_reissued(o), o.ca_key_pem),
     "Cannot update to a cert with an identical key"),
])
def test_refusals(make: object, message: str) -> None:
    old = CA.create_root_ca(NOW)
    cert, key = user_root()
    c, k = make(cert, key, old)  # type: ignore[operator]
    with pytest.raises(ShoalError) as e:
        CA.plan_ca_update(old, 0, c, k, NOW)
    assert message in e.value.message
    assert e.value.message.startswith("rpc error: code = InvalidArgument desc = ")


def _reissued(root: object) -> str:
    """The same root key in a new self-signed certificate."""
    key = serialization.load_pem_private_key(root.ca_key_pem.encode(), None)  # type: ignore[attr-defined]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm-ca")])
    start = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM).decode()
