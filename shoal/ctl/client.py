"""A small synchronous Engine API client over a unix socket or TCP (with TLS), for the `shoal` subcommands.

Paths are unversioned (the daemon answers them at its newest API version). A daemon that cannot be reached raises
`Unreachable`; an answer outside 2xx raises `APIError` with dockerd's message, which the CLI prints as the docker
CLI does: `Error response from daemon: ...`.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from shoal.ctl.endpoint import Endpoint


class Unreachable(Exception):
    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"Cannot connect to the Shoal daemon at {url}. Is the daemon running? ({why})")


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Error response from daemon: {message}")
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


def filters(**kw: str | list[str]) -> str:
    """The `filters` query parameter: {"name": ["value", ...]} as JSON."""
    return json.dumps({k.replace("_", "-"): [v] if isinstance(v, str) else v for k, v in kw.items()})


class Client:
    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._ssl = endpoint.ssl_context()

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        ep = self.endpoint
        t = self.timeout if timeout is None else timeout
        if ep.scheme == "unix":
            return _UnixConnection(ep.path, t)
        if self._ssl is not None:
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=t, context=self._ssl)
        return http.client.HTTPConnection(ep.host, ep.port, timeout=t)

    def _open(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any,
              timeout: float | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        url = quote(path) + ("?" + urlencode({k: v for k, v in query.items() if v is not None}) if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Host": "shoal", "User-Agent": "shoal-cli"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = self._connection(timeout)
        try:
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Unreachable(self.endpoint.url, str(e) or type(e).__name__) from None
        if resp.status >= 300:
            raw = resp.read()
            conn.close()
            try:
                msg = json.loads(raw).get("message", "")
            except (ValueError, AttributeError):
                msg = raw.decode(errors="replace").strip()
            raise APIError(resp.status, msg or f"status {resp.status}")
        return conn, resp

    def request(self, method: str, path: str, query: Mapping[str, Any] | None = None, body: Any = None,
                timeout: float | None = None) -> Any:
        """The decoded JSON answer (None for an empty body)."""
        conn, resp = self._open(method, path, query, body, timeout)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(self.endpoint.url, str(e)) from None
        finally:
            conn.close()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query)

    def text(self, path: str, **query: Any) -> bytes:
        """The raw body of a GET (e.g. a log stream that ends)."""
        conn, resp = self._open("GET", path, query, None, None)
        try:
            return resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(self.endpoint.url, str(e)) from None
        finally:
            conn.close()

    def post(self, path: str, body: Any = None, **query: Any) -> Any:
        return self.request("POST", path, query, body)

    def stream_json(self, path: str, timeout: float | None = None, **query: Any) -> Iterator[Any]:
        """The JSON objects of a streamed answer (/events), one a line, until the daemon ends it."""
        conn, resp = self._open("GET", path, query, None, timeout)
        try:
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise Unreachable(self.endpoint.url, str(e)) from None
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()
