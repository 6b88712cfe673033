"""The web view's way into the cluster: the node's Engine API on its unix socket, as the docker CLI reaches it.

Nothing here reads the store or calls the control API directly, so a web action needs what an API request
needs, is validated by the same handlers, forwarded to the leader by the same code and recorded in the same
events."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

API = "/v1.47"  # the version the stock CLI of Debian 12 negotiates; every field read here exists in it
# The Engine API's multiplexed log stream: an 8-byte header (stream, 0, 0, 0, big-endian length) per frame.
_FRAME = struct.Struct(">BxxxL")


@dataclass
class EngineError(Exception):
    """The Engine API's error answer, passed on to the browser with its status and message."""
    status: int
    message: str

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class EngineAPI:
    """An HTTP client of the Engine API on `socket` (a unix socket path)."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket)), base_url="http://shoal",
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """The decoded JSON answer (None when empty); an error answer raises EngineError."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._http().request(method, API + path, data=data, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                raw = await r.read()
                decoded: Any = json.loads(raw) if raw.strip() else None
                if r.status >= 400:
                    msg = decoded.get("message") if isinstance(decoded, dict) else raw.decode(errors="replace")
                    raise EngineError(r.status, str(msg))
                return decoded
        except (aiohttp.ClientConnectionError, TimeoutError) as e:
            raise EngineError(503, f"the node's Engine API did not answer: {e}") from None
        except json.JSONDecodeError:
            raise EngineError(502, "the node's Engine API answered something that is not JSON") from None

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def events(self, since: float) -> AsyncIterator[dict[str, Any]]:
        """The swarm's events from `since` (a Unix time) on, then live, until the stream ends."""
        q = quote(json.dumps({"scope": ["swarm"]}))
        async with self._http().get(f"{API}/events?since={since:.3f}&filters={q}") as r:
            if r.status >= 400:
                raise EngineError(r.status, (await r.text()).strip())
            async for line in r.content:
                if line.strip():
                    yield json.loads(line)

    async def service_logs(self, service: str, tail: int, follow: bool) -> AsyncIterator[tuple[str, str]]:
        """(stream, line) of a service's logs as the Engine API sends them with `timestamps` and `details`:
        "TIMESTAMP com.docker.swarm.node.id=...,com.docker.swarm.service.id=...,com.docker.swarm.task.id=...
        MESSAGE" (`log_line` takes one apart)."""
        path = (f"{API}/services/{quote(service, safe='')}/logs?stdout=1&stderr=1&timestamps=1&details=1"
                f"&tail={tail}&follow={1 if follow else 0}")
        async with self._http().get(path) as r:
            if r.status >= 400:
                body = await r.read()
                try:
                    msg = str(json.loads(body).get("message", ""))
                except (ValueError, AttributeError):
                    msg = body.decode(errors="replace")
                raise EngineError(r.status, msg)
            if "multiplexed" not in r.headers.get("Content-Type", ""):
                async for raw in r.content:  # a TTY service: one raw stream
                    yield "stdout", raw.decode(errors="replace").rstrip("\r\n")
                return
            while True:
                try:
                    head = await r.content.readexactly(_FRAME.size)
                except EOFError:  # IncompleteReadError: the stream ended
                    break
                stream, size = _FRAME.unpack(head)
                payload = await r.content.readexactly(size)
                name = "stderr" if stream == 2 else "stdout"
                for line in payload.decode(errors="replace").splitlines():
                    yield name, line


def log_line(raw: str) -> dict[str, str]:
    """One line of `service_logs` as {time, task, node, line}; what does not parse is all `line`."""
    ts, _, rest = raw.partition(" ")
    if not rest or not ts[:1].isdigit():
        return {"time": "", "task": "", "node": "", "line": raw}
    attrs: dict[str, str] = {}
    if rest.startswith("com.docker.swarm."):
        details, _, rest = rest.partition(" ")
        for kv in details.split(","):
            k, _, v = kv.partition("=")
            attrs[k] = v
    return {"time": ts, "task": attrs.get("com.docker.swarm.task.id", ""),
            "node": attrs.get("com.docker.swarm.node.id", ""), "line": rest}
