"""Who may use the web view, and the checks every request passes.

- The listener: loopback by default; any other address only with TLS (`--web-tlscert`, `--web-tlskey`), refused
  at start otherwise.
- A login on every address: the token the daemon prints at start (also in DATA_DIR/web-token, mode 0600, so
  only who can read the node's data, root on the host, has it), exchanged for a session cookie; or, with
  `--web-tlscacert`, a client certificate signed by that CA (the swarm's root CA, `docker swarm ca`, is meant):
  the handshake verifies it, and a certificate whose OU is `swarm-worker` (a worker node's identity, which every
  worker host holds) is refused, so a worker never steers the swarm through this door.
- On loopback the Host header must name a loopback host: a page elsewhere that rebinds its DNS name to 127.0.0.1
  reaches the port but not the view.
- A change (POST) needs the `X-Shoal-Web` header, which a cross-site form or image cannot send and a cross-site
  script cannot without a CORS preflight this server never grants, and an Origin, where the browser sends one,
  of this very site; the cookie is SameSite=Strict and HttpOnly.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from shoal.host.addrs import is_loopback

CSRF_HEADER = "X-Shoal-Web"
WORKER_OU = "swarm-worker"
TOKEN_FILE = "web-token"
SESSIONS_MAX = 1000  # logins kept; the oldest goes first (each login adds one)
SESSION_TTL = 12 * 3600.0  # seconds a login lasts (a shift), then the token or certificate again


class WebConfigError(ValueError):
    """Flags that cannot make a safe listener (the CLI turns it into a usage error)."""


def tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The listener's TLS: its certificate, and with `client_ca` client certificates verified when presented
    (optional: a browser without one logs in with the token)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            ctx.load_verify_locations(cafile=str(client_ca))
    except (OSError, ssl.SSLError) as e:
        raise WebConfigError(f"could not load the TLS files for --web-addr: {e}") from None
    ctx.verify_mode = ssl.CERT_OPTIONAL if client_ca is not None else ssl.CERT_NONE
    return ctx


def check_listener(host: str, tls: ssl.SSLContext | None) -> None:
    """Refuse a listener anyone off this host could reach without TLS."""
    if tls is None and not is_loopback(host):
        raise WebConfigError("--web-addr off loopback needs TLS (--web-tlscert and --web-tlskey): the view's login "
                             "and session would cross the network in the clear")


def new_token(data_dir: Path) -> str:
    """A fresh login token, written to DATA_DIR/web-token (mode 0600) for who can read the node's data."""
    token = secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def _loopback_host(host_header: str) -> bool:
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def peer_identity(request: web.Request) -> str | None:
    """The verified client certificate's subject (CN/OU), or None without one."""
    transport = request.transport
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    fields: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            fields.setdefault(k, v)
    return f"{fields.get('commonName', '?')}/{fields.get('organizationalUnitName', '')}"


@dataclass
class Access:
    """The login state of one web listener."""
    token: str
    loopback: bool  # bound to loopback: the Host header must be a loopback host
    tls: bool
    port: int
    # session cookie -> (who logged in, when: time.monotonic())
    sessions: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def cookie(self) -> str:
        # Per port: browsers send a host's cookies to every port of it, and two daemons on one host each keep
        # their own logins.
        return f"shoal_web_{self.port}"

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.token.encode())

    def login(self, who: str) -> str:
        while len(self.sessions) >= SESSIONS_MAX:
            del self.sessions[next(iter(self.sessions))]
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = (who, time.monotonic())
        return sid

    def set_cookie(self, resp: web.StreamResponse, sid: str) -> None:
        resp.set_cookie(self.cookie, sid, httponly=True, samesite="Strict", secure=self.tls, path="/",
                        max_age=int(SESSION_TTL))

    def logout(self, request: web.Request) -> None:
        self.sessions.pop(request.cookies.get(self.cookie, ""), None)

    def who(self, request: web.Request) -> str | None:
        """Who this request comes from, or None when nobody logged in. A worker's certificate is nobody."""
        sid = request.cookies.get(self.cookie)
        if sid and sid in self.sessions:
            who, since = self.sessions[sid]
            if time.monotonic() - since < SESSION_TTL:
                return who
            del self.sessions[sid]
        ident = peer_identity(request)
        if ident is not None and not ident.endswith("/" + WORKER_OU):
            return f"certificate {ident}"
        return None

    def host_ok(self, request: web.Request) -> bool:
        return not self.loopback or _loopback_host(request.host)

    def same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser's cross-site request (browsers send Origin on every cross-site POST)
        scheme = "https" if self.tls else "http"
        return origin.lower() == f"{scheme}://{request.host}".lower()
