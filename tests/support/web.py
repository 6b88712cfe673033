"""A plain HTTP client of a daemon's web view (`--web-addr`), for the tests of who gets in.

`WebClient(base)` keeps the session cookie of a login; `.get`/`.post` return (status, headers, body bytes) and
never raise for an HTTP error status; redirects are not followed, so a 302 is seen as such. `stream_head` reads
the first bytes of a Server-Sent Events stream and closes it."""

from __future__ import annotations

import http.client
import json
import ssl
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

CSRF = {"X-Shoal-Web": "1"}


class WebClient:
    def __init__(self, base: str, context: ssl.SSLContext | None = None) -> None:
        self.base = base.rstrip("/")
        u = urlsplit(self.base)
        self.https = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.https else 80)
        self.context = context
        self.cookies: dict[str, str] = {}

    def request_cookie(self) -> str:
        """The Cookie header this client sends."""
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 30.0, limit: int | None = None) -> tuple[int, dict[str, str], bytes]:
        h = dict(headers or {})
        if self.cookies and "Cookie" not in h:
            h["Cookie"] = self.request_cookie()
        conn = self._conn(timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read(limit) if limit is not None else r.read()
            for raw in r.headers.get_all("Set-Cookie") or []:
                c: SimpleCookie = SimpleCookie()
                c.load(raw)
                for k, morsel in c.items():
                    if morsel.value:
                        self.cookies[k] = morsel.value
                    else:
                        self.cookies.pop(k, None)
            return r.status, {k.lower(): v for k, v in r.headers.items()}, data
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None,
             **kw: Any) -> tuple[int, dict[str, str], bytes]:
        h = {"Content-Type": "application/json", **(headers or {})}
        return self.request("POST", path, body=json.dumps(body or {}).encode(), headers=h, **kw)

    def login(self, token: str) -> int:
        status, _, _ = self.post_form("/login", {"token": token})
        return status

    def post_form(self, path: str, form: dict[str, str],
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        from urllib.parse import urlencode

        h = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.request("POST", path, body=urlencode(form).encode(), headers=h)

    def stream_head(self, path: str, until: bytes, limit: int = 4 << 20,
                    timeout: float = 30.0) -> tuple[int, bytes]:
        """A stream's status and its bytes up to and including the first `until` (or what came before it ended)."""
        h = {"Cookie": self.request_cookie()} if self.cookies else {}
        conn = self._conn(timeout)
        try:
            conn.request("GET", path, headers=h)
            r = conn.getresponse()
            data = b""
            while until not in data and len(data) < limit:
                chunk = r.read1(65536) if r.status == 200 else r.read()
                if not chunk:
                    break
                data += chunk
            return r.status, data
        finally:
            conn.close()
