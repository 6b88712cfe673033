"""The cluster's root CA and join tokens.

Join tokens are `SWMTKN-1-<digest>-<secret>`: the digest is the SHA-256 of the root CA certificate in
base 36 (50 characters), so a joining node can pin the CA it is shown; the secret is 128 random bits in
base 36 (25 characters).

Node certificates (ECDSA P-256) are issued against a CSR once the join token is checked. As swarmkit's,
they carry the node ID as CN, the role as OU (`swarm-manager` / `swarm-worker`) and the cluster ID as O,
with DNS SANs `<role OU>` and `<node ID>` so a client verifies a manager as `swarm-manager`. Only the CSR's
public key is used: every name in the certificate is the CA's decision.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import random
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from shoal.errors import InvalidArgument, ShoalError
from shoal.ids import new_id
from shoal.model.objects import CAConfig, Cluster, ExternalCA, RootCA, SwarmSpec

MANAGER_OU = "swarm-manager"
WORKER_OU = "swarm-worker"
ROLE_OU = {"manager": MANAGER_OU, "worker": WORKER_OU}
OU_ROLE = {v: k for k, v in ROLE_OU.items()}

# swarmkit's texts, as dockerd shows them
INVALID_TOKEN = "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster"
MALFORMED_TOKEN = "invalid join token"

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
        .add_extension(_CA_USAGE, critical=True)
        # The key identifier tells roots with the same name (every swarm root is CN=swarm-ca) apart while a
        # verifier builds a chain during a rotation.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return root_of(cert.public_bytes(serialization.Encoding.PEM).decode(),
                   key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode())


_CA_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)


CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _ca_key(key_pem: str) -> CAKey:
    """A root's signing key: ECDSA (the roots Shoal makes) or RSA (an operator's root, as swarmkit accepts)."""
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey), type(key)
    return key


def _sig_hash(key: CAKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """The digest cfssl's DefaultSigAlgo picks for the key, as swarmkit's signer uses."""
    if isinstance(key, rsa.RSAPrivateKey):
        bits = key.key_size
        return hashes.SHA512() if bits >= 4096 else hashes.SHA384() if bits >= 3072 else hashes.SHA256()
    name = key.curve.name
    return hashes.SHA512() if name == "secp521r1" else hashes.SHA384() if name == "secp384r1" else hashes.SHA256()


def root_of(cert_pem: str, key_pem: str = "") -> RootCA:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    return RootCA(ca_cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(), ca_key_pem=key_pem,
                  cert_hash="sha256:" + hashlib.sha256(der).hexdigest())


def ca_digest_b36(root: RootCA) -> str:
    return _base36(int(root.cert_hash.split(":", 1)[1], 16), 50)


def make_join_token(root: RootCA, rng: random.Random) -> str:
    return f"SWMTKN-1-{ca_digest_b36(root)}-{new_id(rng)}"


def cert_expiry(root: RootCA) -> float:
    cert = x509.load_pem_x509_certificate(root.ca_cert_pem.encode())
    return cert.not_valid_after_utc.timestamp()


def tls_info(root: RootCA) -> dict[str, str]:
    """The TLSInfo block dockerd shows: the root cert and its subject and public key in base64."""
    return dict(_tls_info(root.ca_cert_pem))


@functools.lru_cache(maxsize=64)
def _tls_info(ca_cert_pem: str) -> dict[str, str]:
    # Asked on every heartbeat (is the node's certificate from the desired root?): a few roots, parsed once.
    import base64

    cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    subject = cert.subject.public_bytes()
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"TrustRoot": ca_cert_pem, "CertIssuerSubject": base64.b64encode(subject).decode(),
            "CertIssuerPublicKey": base64.b64encode(spki).decode()}


def issuer_public_key(ca_cert_pem: str) -> str:
    """The root's public key as TLSInfo's CertIssuerPublicKey carries it (what a node's issuer is compared by)."""
    return _tls_info(ca_cert_pem)["CertIssuerPublicKey"]


# --- join tokens ----------------------------------------------------------------------------------


def digest_b36_of_pem(ca_cert_pem: str) -> str:
    cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    return _base36(int(hashlib.sha256(der).hexdigest(), 16), 50)


def parse_join_token(token: str) -> tuple[str, str]:
    """(CA digest in base 36, secret) of a `SWMTKN-1-<digest>-<secret>` token; InvalidArgument if malformed."""
    parts = token.split("-")
    if len(parts) != 4 or parts[0] != "SWMTKN" or parts[1] != "1" or len(parts[2]) != 50 or not parts[3] \
            or any(c not in _B36 for c in parts[2] + parts[3]):
        raise InvalidArgument(MALFORMED_TOKEN)
    return parts[2], parts[3]


def token_role(tokens_worker: str, tokens_manager: str, token: str) -> str:
    """The role a join token grants in a cluster with these tokens; ShoalError(INVALID_TOKEN) if none."""
    tb = token.encode()
    if tokens_worker and hmac.compare_digest(tb, tokens_worker.encode()):
        return "worker"
    if tokens_manager and hmac.compare_digest(tb, tokens_manager.encode()):
        return "manager"
    raise ShoalError(INVALID_TOKEN)


# --- node keys and certificates -------------------------------------------------------------------


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    role: str  # manager | worker
    cluster_id: str
    not_after: float


def new_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def make_csr(key_pem: str) -> str:
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def issue_node_cert(root: RootCA, csr_pem: str, node_id: str, role: str, cluster_id: str, now: float,
                    expiry_s: float) -> str:
    """Sign the CSR's public key into a node certificate; names come from the arguments, never the CSR."""
    if not root.ca_key_pem:
        raise ShoalError("this CA cannot issue certificates: no signing key")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise InvalidArgument("rpc error: code = InvalidArgument desc = invalid CSR") from None
    if not csr.is_signature_valid:
        raise InvalidArgument("rpc error: code = InvalidArgument desc = CSR signature is invalid")
    pub = csr.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        raise InvalidArgument("rpc error: code = InvalidArgument desc = only ECDSA P-256 keys are accepted")
    if root.rotation_ca_cert_pem:  # during a rotation every certificate comes from the next root already
        if not root.rotation_ca_key_pem:
            raise ShoalError("this CA cannot issue certificates: no signing key")
        root = RootCA(ca_cert_pem=root.rotation_ca_cert_pem, ca_key_pem=root.rotation_ca_key_pem)
    ca_cert = x509.load_pem_x509_certificate(root.ca_cert_pem.encode())
    ca_key = _ca_key(root.ca_key_pem)
    ou = ROLE_OU[role]
    start = datetime.datetime.fromtimestamp(now, datetime.UTC) - datetime.timedelta(minutes=5)
    end = datetime.datetime.fromtimestamp(now + expiry_s, datetime.UTC)
    end = min(end, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                              x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(ou), x509.DNSName(node_id)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, _sig_hash(ca_key))
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def identity_of(cert_pem: str | bytes) -> NodeIdentity:
    """Node ID, role and cluster ID from a node certificate (which TLS has already verified)."""
    return _identity_of(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)


@functools.lru_cache(maxsize=16384)
def _identity_of(raw: bytes) -> NodeIdentity:
    # Every RPC on the secure listener names its caller this way: parse each node's certificate once, not
    # once per heartbeat (thousands of nodes beat every few seconds). The answer is immutable.
    cert = x509.load_pem_x509_certificate(raw)

    def one(oid: x509.ObjectIdentifier) -> str:
        attrs = cert.subject.get_attributes_for_oid(oid)
        return str(attrs[0].value) if len(attrs) == 1 else ""

    return NodeIdentity(node_id=one(NameOID.COMMON_NAME), role=OU_ROLE.get(one(NameOID.ORGANIZATIONAL_UNIT_NAME), ""),
                        cluster_id=one(NameOID.ORGANIZATION_NAME), not_after=cert.not_valid_after_utc.timestamp())


def verify_issued_by(cert_pem: str, root: RootCA) -> bool:
    """True if the certificate was signed by this root's key (a check a joining node makes on its answer)."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(root.ca_cert_pem.encode())
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def renew_at(cert_pem: str, rng: random.Random) -> float:
    """When to renew: at a random point between 50% and 80% of the certificate's lifetime (as swarmkit)."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return start + (end - start) * (0.5 + 0.3 * rng.random())


# --- root rotation (`docker swarm ca --rotate`) -----------------------------------------------------
#
# A rotation keeps the current root and adds the next one with a cross-signed intermediate (the next root's
# subject and key, signed by the current root). From then on certificates are issued by the next root and
# presented with the intermediate, so a node still trusting only the current root verifies them; nodes are
# told to renew, and get old+next as their trust bundle. Once every node's certificate comes from the next
# root it becomes the root, the old one is dropped (its certificates fail TLS from then on) and the join
# tokens are made again for the new digest. See docs/design/cluster.md.


def _rpc_invalid(desc: str) -> InvalidArgument:
    return InvalidArgument(f"rpc error: code = InvalidArgument desc = {desc}")


def split_pems(bundle: str) -> list[str]:
    out, cur = [], []
    for line in bundle.strip().splitlines():
        cur.append(line.strip())
        if line.startswith("-----END"):
            out.append("\n".join(cur) + "\n")
            cur = []
    return out


def normalize_pem(pem: str) -> str:
    return "".join(x509.load_pem_x509_certificate(p.encode()).public_bytes(serialization.Encoding.PEM).decode()
                   for p in split_pems(pem))


def desired_root_pem(root: RootCA) -> str:
    """The root every node must end up on: the next one while a rotation is in progress."""
    return root.rotation_ca_cert_pem or root.ca_cert_pem


def trust_bundle(root: RootCA) -> str:
    """What nodes trust now: both roots during a rotation, else the root."""
    return root.ca_cert_pem + (root.rotation_ca_cert_pem if root.rotation_ca_cert_pem else "")


def signing_chain(root: RootCA) -> str:
    """Intermediates to present after a certificate issued now (the cross-signed next root during a rotation)."""
    return root.rotation_cross_signed_pem


def cross_sign(new_root_pem: str, old: RootCA) -> str:
    """The next root's subject and public key as an intermediate signed by the current root."""
    if not old.ca_key_pem:
        raise _rpc_invalid("rotating from one external CA to a different external CA is not supported")
    new = x509.load_pem_x509_certificate(new_root_pem.encode())
    old_cert = x509.load_pem_x509_certificate(old.ca_cert_pem.encode())
    old_key = _ca_key(old.ca_key_pem)
    b = (x509.CertificateBuilder().subject_name(new.subject).issuer_name(old_cert.subject)
         .public_key(new.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(new.not_valid_before_utc).not_valid_after(min(new.not_valid_after_utc,
                                                                          old_cert.not_valid_after_utc))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(_CA_USAGE, critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(new.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(old_key.public_key()), critical=False))
    return b.sign(old_key, _sig_hash(old_key)).public_bytes(serialization.Encoding.PEM).decode()


def validate_signing_root(cert_pem: str, key_pem: str, now: float) -> RootCA:
    """A user-provided root (`swarm ca --rotate --ca-cert --ca-key`), checked as swarmkit checks it."""
    if key_pem and not cert_pem:
        raise _rpc_invalid("if a signing CA key is provided, the signing CA cert must also be provided")
    pems = split_pems(cert_pem)
    if len(pems) != 1:
        raise _rpc_invalid("the desired CA certificate cannot contain multiple certificates")
    try:
        cert = x509.load_pem_x509_certificate(pems[0].encode())
    except ValueError:
        raise _rpc_invalid("could not parse the desired CA certificate") from None
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise _rpc_invalid("invalid root CA certificate: the certificate is not a CA")
    if cert.not_valid_after_utc.timestamp() < now + 365 * 24 * 3600:
        raise _rpc_invalid("CA certificate expires too soon")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise _rpc_invalid("invalid root CA certificate: the certificate is not self-signed") from None
    if key_pem:
        try:
            key = serialization.load_pem_private_key(key_pem.encode(), None)
        except (ValueError, TypeError):
            raise _rpc_invalid("invalid signing CA key: could not parse it") from None
        _check_cert_key_match(cert, key)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    return root_of(pems[0], key_pem)


def _check_cert_key_match(cert: x509.Certificate, key: object) -> None:
    """swarmkit's ensureCertKeyMatch: RSA of 2048 bits or more, or ECDSA on P-256/384/521, and the key must
    be the certificate's."""
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        if pub.key_size < 2048 or nums.e == 1:
            raise _rpc_invalid("unsupported RSA key parameters")
        if isinstance(key, rsa.RSAPrivateKey) and key.public_key().public_numbers() == nums:
            return
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise _rpc_invalid("unsupported ECDSA key parameters")
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.public_key().public_numbers() == pub.public_numbers():
            return
    else:
        raise _rpc_invalid("unknown or unsupported certificate public key algorithm")
    raise _rpc_invalid("certificate key mismatch")


def external_ca_unreachable() -> InvalidArgument:
    """swarmkit's answer when a root is given without its key and no external CA can sign for it."""
    return _rpc_invalid("there must be at least one valid, reachable external CA corresponding to the desired "
                        "CA certificate")


def plan_ca_update(root: RootCA, force_rotate: int, signing_cert: str, signing_key: str, now: float,
                   external_cas: tuple[ExternalCA, ...] = ()) -> RootCA:
    """The root CA a cluster update asks for (swarmkit's validateCAConfig, in short): unchanged, a new
    generated root (ForceRotate bumped), or a user-given root (cert + key). A rotation in progress is
    replaced by a newer one; asking for the current root aborts it."""
    if signing_key and not signing_cert:
        raise _rpc_invalid("if a signing CA key is provided, the signing CA cert must also be provided")
    if not signing_cert:
        if force_rotate == root.last_forced_rotation:
            return root
        new = create_root_ca(now)
    else:
        new = validate_signing_root(signing_cert, signing_key, now)
        if not signing_key and not any(external_ca_reachable(u, new.ca_cert_pem) for u in
                                       external_ca_urls(external_cas, new.ca_cert_pem, root.ca_cert_pem)):
            raise external_ca_unreachable()
        if new.ca_cert_pem == normalize_pem(root.ca_cert_pem):
            return replace(root, ca_key_pem=new.ca_key_pem or root.ca_key_pem, rotation_ca_cert_pem="",
                           rotation_ca_key_pem="", rotation_cross_signed_pem="", last_forced_rotation=force_rotate)
        if _pub(new.ca_cert_pem) == _pub(root.ca_cert_pem):
            raise _rpc_invalid("Cannot update to a cert with an identical key")
        if root.rotation_ca_cert_pem and new.ca_cert_pem == normalize_pem(root.rotation_ca_cert_pem):
            return replace(root, rotation_ca_key_pem=new.ca_key_pem, last_forced_rotation=force_rotate)
    return replace(root, rotation_ca_cert_pem=new.ca_cert_pem, rotation_ca_key_pem=new.ca_key_pem,
                   rotation_cross_signed_pem=cross_sign(new.ca_cert_pem, root), last_forced_rotation=force_rotate)


def finish_rotation(root: RootCA) -> RootCA:
    new = root_of(root.rotation_ca_cert_pem, root.rotation_ca_key_pem)
    return replace(new, last_forced_rotation=root.last_forced_rotation)


def _pub(cert_pem: str) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def issuer_root(cert_pem: str, roots_pem: str) -> str:
    """The root (PEM) among `roots_pem` whose key signed this certificate, or ""."""
    cert = x509.load_pem_x509_certificate(split_pems(cert_pem)[0].encode())
    for r in split_pems(roots_pem):
        ca = x509.load_pem_x509_certificate(r.encode())
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca.public_bytes(serialization.Encoding.PEM).decode()
    return ""


def chains_to(cert_pem: str, chain_pem: str, roots_pem: str) -> bool:
    """True if the certificate was issued by one of the roots, directly or through one of the intermediates
    (each of them issued by one of the roots)."""
    if issuer_root(cert_pem, roots_pem):
        return True
    cert = x509.load_pem_x509_certificate(split_pems(cert_pem)[0].encode())
    for inter in split_pems(chain_pem):
        ic = x509.load_pem_x509_certificate(inter.encode())
        try:
            cert.verify_directly_issued_by(ic)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if issuer_root(inter, roots_pem):
            return True
    return False


def node_tls_info(cert_pem: str, issuer_pem: str) -> dict[str, str]:
    """A node's Description.TLSInfo: the root that issued its certificate (its trust root once rotated)."""
    info = tls_info(RootCA(ca_cert_pem=issuer_pem))
    del cert_pem
    return info


__all__ = ["INVALID_TOKEN", "NodeIdentity", "ca_digest_b36", "create_root_ca", "digest_b36_of_pem", "identity_of",
           "issue_node_cert", "issuer_public_key", "make_csr", "make_join_token", "new_id", "new_key_pem",
           "parse_join_token", "renew_at", "tls_info", "token_role", "verify_issued_by"]


def apply_ca_spec(cluster: Cluster, spec: SwarmSpec, now: float) -> tuple[SwarmSpec, RootCA]:
    """For a cluster update: the root CA the new spec asks for. The signing cert and key are consumed into
    the root CA object (never kept in the spec, so a later update cannot ask for them again by accident)."""
    cfg = spec.ca_config
    root = plan_ca_update(cluster.root_ca, cfg.force_rotate, cfg.signing_ca_cert, cfg.signing_ca_key, now,
                          cfg.external_cas)
    return replace(spec, ca_config=replace(cfg, signing_ca_cert="", signing_ca_key="")), root


def rotation_in_progress(root: RootCA) -> bool:
    return bool(root.rotation_ca_cert_pem)


def desired_tls_info(root: RootCA) -> dict[str, str]:
    """The cluster's TLSInfo as GET /swarm shows it: the root every node is being moved to."""
    return tls_info(RootCA(ca_cert_pem=desired_root_pem(root)))


# --- external CAs (cfssl) ---------------------------------------------------------------------------
#
# As swarmkit's ca/external.go: when the cluster's CAConfig lists cfssl external CAs for the root that
# certificates are issued from now (an external CA without a CA cert stands for the current root), a node
# certificate is signed by POSTing swarmkit's sign request to them, first success wins; only when none is
# configured for that root does the local key sign.

EXTERNAL_CA_TIMEOUT = 5.0  # swarmkit's ExternalRequestTimeout
CERTIFICATE_MAX_SIZE = 256 << 10  # swarmkit's CertificateMaxSize (a cfssl JSON answer included)


class ExternalCAError(ShoalError):
    """Signing through an external CA failed (`recoverable`: the CA could not be reached or answered
    garbage, so a later attempt may succeed)."""

    def __init__(self, message: str, recoverable: bool = True) -> None:
        super().__init__(message)
        self.recoverable = recoverable


def external_ca_urls(external_cas: tuple[ExternalCA, ...] | list[ExternalCA], desired_pem: str,
                     current_pem: str) -> list[str]:
    """The cfssl URLs of the external CAs for `desired_pem` (swarmkit's filterExternalCAURLS)."""
    want = normalize_pem(desired_pem)
    out = []
    for e in external_cas:
        if e.protocol.lower() != "cfssl" or not e.url:
            continue
        if normalize_pem(e.ca_cert or current_pem) == want:
            out.append(e.url)
    return out


def prepare_sign_request(csr_pem: str, cn: str, ou: str, org: str) -> dict[str, object]:
    """cfssl's SignRequest as swarmkit's PrepareCSR fills it: the names are the CA's decision."""
    hosts = [ou, cn] + (["swarm-ca"] if ou == MANAGER_OU else [])
    return {"hosts": hosts, "certificate_request": csr_pem,
            "subject": {"CN": cn, "names": [{"OU": ou, "O": org}]}}


def _ssl_context(ca_pool_pem: str, client_cert_pem: str = "", client_key_pem: str = "") -> object:
    import ssl
    import tempfile

    ctx = ssl.create_default_context(cadata=ca_pool_pem or None)
    if not ca_pool_pem:
        ctx.load_default_certs()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # as Go's tls.Config with only RootCAs: the chain is verified, not a name
    if client_cert_pem and client_key_pem:
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:  # 0600; ssl loads a chain from files only
            f.write(client_key_pem + client_cert_pem)
            f.flush()
            ctx.load_cert_chain(f.name)
    return ctx


def _cfssl_post(url: str, body: bytes, ctx: object, timeout: float) -> str:
    import http.client
    import json
    import ssl
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ExternalCAError(f"unable to perform certificate signing request: unsupported URL {url!r}")
    try:
        conn: http.client.HTTPConnection
        if u.scheme == "https":
            assert isinstance(ctx, ssl.SSLContext)
            conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        try:
            conn.request("POST", u.path + (f"?{u.query}" if u.query else ""), body,
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read(CERTIFICATE_MAX_SIZE)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        raise ExternalCAError(f"unable to perform certificate signing request: Post \"{url}\": {e}") from None
    if resp.status != 200:
        raise ExternalCAError(f"unexpected status code in CSR response: {resp.status} - "
                              f"{data.decode(errors='replace')}")
    try:
        answer = json.loads(data)
    except ValueError as e:
        raise ExternalCAError(f"unable to parse JSON response: {e}") from None
    if not isinstance(answer, dict) or not answer.get("success") or answer.get("result") is None:
        errs = answer.get("errors") if isinstance(answer, dict) else None
        if errs:
            raise ExternalCAError(f"response errors: {errs}", recoverable=False)
        raise ExternalCAError("certificate signing request failed", recoverable=False)
    result = answer["result"]
    if not isinstance(result, dict):
        raise ExternalCAError(f"invalid result type: {type(result).__name__}", recoverable=False)
    cert = result.get("certificate")
    if not isinstance(cert, str):
        raise ExternalCAError(f"invalid result certificate field type: {type(cert).__name__}", recoverable=False)
    return cert


def cfssl_sign(urls: list[str], request: dict[str, object], ca_pool_pem: str, *, client_cert_pem: str = "",
               client_key_pem: str = "", intermediates_pem: str = "",
               timeout: float = EXTERNAL_CA_TIMEOUT) -> str:
    """POST the sign request to each URL in turn (blocking; run it in a thread from async code). Returns the
    first certificate (PEM, followed by `intermediates_pem`); when every URL fails, the last error."""
    import json

    if not urls:
        raise ExternalCAError("no external CA URLs", recoverable=False)
    body = json.dumps(request).encode()
    ctx = _ssl_context(ca_pool_pem, client_cert_pem, client_key_pem)
    err: ExternalCAError | None = None
    for url in urls:
        try:
            return _cfssl_post(url, body, ctx, timeout) + intermediates_pem
        except ExternalCAError as e:
            err = e
    assert err is not None
    raise err


def external_ca_reachable(url: str, wanted_pem: str, timeout: float = EXTERNAL_CA_TIMEOUT) -> bool:
    """swarmkit's validateExternalCAURL: an https URL whose server completes a TLS handshake with a certificate
    that chains to the wanted root."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme != "https" or not u.hostname:
        return False
    ctx = _ssl_context(wanted_pem)
    assert isinstance(ctx, ssl.SSLContext)
    try:
        with socket.create_connection((u.hostname, u.port or 443), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=u.hostname):
            return True
    except (OSError, ssl.SSLError):
        return False


def sign_node_cert(root: RootCA, ca_config: CAConfig, csr_pem: str, node_id: str, role: str, cluster_id: str,
                   now: float, expiry_s: float, *, client_cert_pem: str = "", client_key_pem: str = "") -> str:
    """A node certificate from the external CA configured for the root certificates are issued from now
    (blocking), else from the local key. The external CA's certificate must chain to that root."""
    desired = desired_root_pem(root)
    urls = external_ca_urls(ca_config.external_cas, desired, root.ca_cert_pem)
    if not urls:
        return issue_node_cert(root, csr_pem, node_id, role, cluster_id, now, expiry_s)
    try:
        x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise InvalidArgument("rpc error: code = InvalidArgument desc = invalid CSR") from None
    pool = trust_bundle(root)
    cert = cfssl_sign(urls, prepare_sign_request(csr_pem, node_id, ROLE_OU[role], cluster_id), pool,
                      client_cert_pem=client_cert_pem, client_key_pem=client_key_pem)
    if not issuer_root(cert, desired):
        raise ExternalCAError("the external CA returned a certificate not issued by the desired root CA",
                              recoverable=False)
    ident = identity_of(cert)
    if (ident.node_id, ident.role, ident.cluster_id) != (node_id, role, cluster_id):
        raise ExternalCAError("the external CA returned a certificate with other names than requested",
                              recoverable=False)
    return cert
