"""A tiny cfssl-compatible signing server on loopback for tests: `POST /api/v1/cfssl/sign`.

`FakeCfssl()` holds its own root CA (key and certificate, CN `external-root`) and serves HTTPS with a server
certificate issued by that root, in a background thread. A sign request's CSR public key is signed with the
subject (CN, names[0].OU/O) and hosts of the request, as cfssl does; every request is recorded in `.requests`.
`.stop()` shuts it down. `.url` is the sign endpoint.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import ssl
import tempfile
import threading
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class FakeCfssl:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "external-root")])
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        self.root = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now)
                     .not_valid_after(now + datetime.timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.root_pem = _pem(self.root)
        self.requests: list[dict[str, Any]] = []
        self.fail_with: tuple[int, dict[str, Any]] | None = None
        tls_key = ec.generate_private_key(ec.SECP256R1())
        tls_cert = self._sign(tls_key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cfssl")]),
                              [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], ExtendedKeyUsageOID.SERVER_AUTH)
        self._tls_file = tempfile.NamedTemporaryFile("w", suffix=".pem")
        self._tls_file.write(tls_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()).decode() + _pem(tls_cert))
        self._tls_file.flush()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self._tls_file.name)
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = fake.handle(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/api/v1/cfssl/sign"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def _sign(self, pub: Any, subject: x509.Name, sans: list[x509.GeneralName], eku: x509.ObjectIdentifier,
              *extra_eku: x509.ObjectIdentifier) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.root.subject).public_key(pub)
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(now + datetime.timedelta(days=90))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([eku, *extra_eku]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def handle(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path != "/api/v1/cfssl/sign":
            return 404, {"success": False, "result": None, "errors": [{"code": 404, "message": "not found"}]}
        req = json.loads(body)
        self.requests.append(req)
        if self.fail_with is not None:
            return self.fail_with
        csr = x509.load_pem_x509_csr(req["certificate_request"].encode())
        subj = req.get("subject") or {}
        attrs = []
        for n in subj.get("names") or []:
            if n.get("O"):
                attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, n["O"]))
            if n.get("OU"):
                attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, n["OU"]))
        if subj.get("CN"):
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, subj["CN"]))
        cert = self._sign(csr.public_key(), x509.Name(attrs), [x509.DNSName(h) for h in req.get("hosts") or []],
                          ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
        return 200, {"success": True, "result": {"certificate": _pem(cert)}, "errors": [], "messages": []}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)
        self._tls_file.close()
