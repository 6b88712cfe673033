"""The cluster's root CA and join tokens.

Join tokens are `SWMTKN-1-<digest>-<secret>`: the digest is the SHA-256 of the root CA certificate in
base 36 (50 characters), so a joining node can pin the CA it is shown; the secret is 128 random bits in
base 36 (25 characters). Node certificates against CSRs come with the multi-node issue.
"""

from __future__ import annotations

import datetime
import hashlib
import random

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.ids import new_id
from shoal.model.objects import RootCA

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int, width: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_B36[r])
    return "".join(reversed(out)).rjust(width, "0")


def create_root_ca(now: float, years: int = 20) -> RootCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm-ca")])
    start = datetime.datetime.fromtimestamp(now, datetime.UTC) - datetime.timedelta(hours=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return RootCA(
        ca_cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca_key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode(),
        cert_hash="sha256:" + hashlib.sha256(der).hexdigest(),
    )


def ca_digest_b36(root: RootCA) -> str:
    return _base36(int(root.cert_hash.split(":", 1)[1], 16), 50)


def make_join_token(root: RootCA, rng: random.Random) -> str:
    return f"SWMTKN-1-{ca_digest_b36(root)}-{new_id(rng)}"


def cert_expiry(root: RootCA) -> float:
    cert = x509.load_pem_x509_certificate(root.ca_cert_pem.encode())
    return cert.not_valid_after_utc.timestamp()


def tls_info(root: RootCA) -> dict[str, str]:
    """The TLSInfo block dockerd shows: the root cert and its subject and public key in base64."""
    import base64

    cert = x509.load_pem_x509_certificate(root.ca_cert_pem.encode())
    subject = cert.subject.public_bytes()
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"TrustRoot": root.ca_cert_pem, "CertIssuerSubject": base64.b64encode(subject).decode(),
            "CertIssuerPublicKey": base64.b64encode(spki).decode()}


__all__ = ["ca_digest_b36", "create_root_ca", "make_join_token", "new_id", "tls_info"]
