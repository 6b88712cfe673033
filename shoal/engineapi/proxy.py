"""Pass every Engine API call a manager does not own to the node's local Docker Engine.

Shoal serves the swarm endpoints itself; containers, images, exec, attach, volumes, local networks,
system df, build, plugins ... are forwarded to the node's Docker Engine, so that one ``DOCKER_HOST``
serves ``docker ps``, ``docker exec -it``, ``docker logs -f``, ``docker run -it --rm``, ``docker cp``...

Two paths:

* **Plain requests** go through an ``aiohttp.ClientSession`` bound to the engine's socket. Method, path,
  query (byte for byte), headers (minus hop-by-hop ones) and the body are forwarded; bodies stream both
  ways chunk by chunk as they arrive (``docker load``/``import``/``cp`` uploads, ``logs -f``, ``events``,
  pull progress, ``stats``). A streamed response also watches the client connection, so the engine
  connection of an idle ``docker logs -f`` is closed as soon as the user presses Ctrl-C.

* **Connection upgrades** (``Connection: Upgrade`` + ``Upgrade: tcp``: ``docker attach``, ``docker exec
  -it``, ``docker run -it``; and any other upgrade, e.g. BuildKit's ``/session`` h2c) become a raw byte
  tunnel. See :meth:`EngineProxy._hijack` for the technique.

API version: a client's ``/v1.NN`` prefix is kept, unless it is higher than the engine's maximum API
version (Shoal announces its own, possibly newer, version in ``/_ping``), in which case the prefix is
rewritten to the engine's version (learnt once from the engine's ``/_ping``).

Errors, as JSON ``{"message": ...}`` which the CLI prints as ``Error response from daemon: ...``:

* no engine configured (the node runs the process executor): ``501 Not Implemented``
  (:data:`NO_ENGINE_STATUS`, :data:`NO_ENGINE_MESSAGE`); the Go client maps 501 to ``errdefs.NotImplemented``.
* the configured engine cannot be reached (socket missing, connection refused): ``503 Service
  Unavailable`` (:data:`ENGINE_UNREACHABLE_STATUS`), mapped to ``errdefs.Unavailable``.
* the engine broke the exchange before answering (reset, garbage head): ``502 Bad Gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from shoal.engineapi.engine_routes import is_engine_route
from shoal.errors import NotImplementedFeature, ShoalError, Unavailable

__all__ = [
    "ENGINE_BAD_GATEWAY_STATUS",
    "ENGINE_UNREACHABLE_STATUS",
    "NO_ENGINE_MESSAGE",
    "NO_ENGINE_STATUS",
    "EngineProxy",
]

NO_ENGINE_STATUS = 501
NO_ENGINE_MESSAGE = (
    "this node has no local container engine (shoal runs with the process executor): "
    "containers, images, exec and other local engine endpoints are not available"
)
ENGINE_UNREACHABLE_STATUS = 503
ENGINE_BAD_GATEWAY_STATUS = 502

# RFC 9110 section 7.6.1 plus the legacy ones; "Host" is set for the engine connection instead.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(?=/|$)")
_READ_CHUNK = 64 * 1024
_HIGH_WATER = 256 * 1024  # pause reading the client while this much is queued towards the engine
_MAX_HEAD = 64 * 1024
_MAX_ERROR_BODY = 16 * 1024 * 1024


class _EngineUnreachable(Exception):
    pass


class _BadGateway(Exception):
    pass


@dataclass(frozen=True)
class _EngineAddress:
    unix_path: str | None
    host: str
    port: int

    @property
    def base_url(self) -> str:
        # The Host header sent to a unix-socket engine is irrelevant; the docker CLI uses "docker".
        return "http://docker" if self.unix_path is not None else f"http://{self.host}:{self.port}"


def _parse_engine_host(engine_host: str) -> _EngineAddress:
    if engine_host.startswith("unix://"):
        path = engine_host[len("unix://") :]
        if not path:
            raise ValueError(f"invalid engine host {engine_host!r}: empty socket path")
        return _EngineAddress(unix_path=path, host="docker", port=0)
    if engine_host.startswith("/"):
        return _EngineAddress(unix_path=engine_host, host="docker", port=0)
    if engine_host.startswith(("tcp://", "http://")):
        url = URL(engine_host)
        if not url.host:
            raise ValueError(f"invalid engine host {engine_host!r}: no host")
        return _EngineAddress(unix_path=None, host=url.host, port=url.explicit_port or 2375)
    raise ValueError(f"unsupported engine host {engine_host!r} (use unix:///path or tcp://host:port)")


def _error(status: int, message: str) -> web.Response:
    # Exactly "application/json" (no charset): the Go client only decodes error bodies with that type.
    return web.Response(body=json.dumps({"message": message}).encode() + b"\n", status=status,
                        headers={"Content-Type": "application/json"})


def _client_gone() -> web.Response:
    # Nobody will read this; aiohttp notices the closed transport and drops it quietly.
    resp = web.Response(status=499, reason="Client Closed Request")
    resp.force_close()
    return resp


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", []):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _is_upgrade(request: web.BaseRequest) -> bool:
    return "upgrade" in _connection_tokens(request.headers) and bool(request.headers.get("Upgrade"))


def _forwarded_request_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones (and those named in Connection), Host and Expect."""
    drop = _HOP_BY_HOP | _connection_tokens(request.headers) | {"host", "expect"}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def _forwarded_response_headers(raw: tuple[tuple[bytes, bytes], ...], keep_length: bool) -> CIMultiDict[str]:
    names: CIMultiDict[str] = CIMultiDict()
    for raw_name, raw_value in raw:
        names.add(raw_name.decode("latin-1"), raw_value.decode("latin-1"))
    drop = _HOP_BY_HOP | _connection_tokens(names)
    if not keep_length:
        drop = drop | {"content-length"}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in names.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def _parse_response_head(head: bytes) -> tuple[int, str, CIMultiDict[str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _BadGateway(f"malformed response status line from the engine: {lines[0][:100]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadGateway(f"malformed response header line from the engine: {line[:100]!r}")
        headers.add(name.strip(), value.strip())
    return int(parts[1]), (parts[2] if len(parts) > 2 else ""), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + size > _MAX_ERROR_BODY:
            raise _BadGateway("response body from the engine is too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


class _TailCollector:
    """Stands in for aiohttp's payload parser (``RequestHandler.set_parser``) for one call, to receive the
    bytes aiohttp already read from the client after the upgrade request (``_message_tail``)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


class _DisconnectWatcher(asyncio.Protocol):
    """A transparent shim between the client's transport and aiohttp's RequestHandler, installed while a
    streamed response is being relayed, so the proxy learns at once when the client goes away (aiohttp does
    not cancel handlers on disconnect by default) and can drop its engine connection."""

    def __init__(self, inner: asyncio.Protocol) -> None:
        self.inner = inner
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Splice(asyncio.Protocol):
    """Owns the client's transport during an upgrade and splices it with a raw engine connection.

    It takes the transport over as soon as the request body has been read, before the engine is even
    contacted, buffering what the client sends meanwhile (and its EOF); :meth:`attach` then connects it to
    the engine. Client -> engine: ``data_received`` writes straight to the engine (pausing the client while
    the engine is slow); the client's EOF (Go's ``CloseWrite`` after stdin EOF) becomes
    ``shutdown(SHUT_WR)`` towards the engine, and ``eof_received`` returns True so that our side of the
    client socket stays writable. Engine -> client: :meth:`pump` copies bytes as they arrive, then
    half-closes the client.
    """

    def __init__(self, original: asyncio.BaseProtocol, transport: asyncio.Transport) -> None:
        self._original = original
        self._transport = transport
        self._engine_reader: asyncio.StreamReader | None = None
        self._engine_writer: asyncio.StreamWriter | None = None
        self._pending = bytearray()  # client bytes received before the engine connection is attached
        self._paused = False
        self.client_read_done = asyncio.Event()
        self.client_lost = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._drain_task: asyncio.Task[None] | None = None

    # -- client side callbacks (asyncio.Protocol) --
    def data_received(self, data: bytes) -> None:
        writer = self._engine_writer
        if writer is None:
            self._pending += data
            if len(self._pending) > _HIGH_WATER:
                self._pause_client()
            return
        if writer.is_closing():
            return
        writer.write(data)
        if self._drain_task is None and writer.transport.get_write_buffer_size() > _HIGH_WATER:
            self._pause_client()
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_engine(writer))

    def eof_received(self) -> bool:
        self.client_read_done.set()
        self._shutdown_engine_write()
        return True  # keep the client socket open for writing: the engine's output must still flow back

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_read_done.set()
        self.client_lost.set()
        self._can_write.set()
        # Let aiohttp's RequestHandler do its bookkeeping (server connection registry, timers).
        self._original.connection_lost(exc)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- helpers --
    def _pause_client(self) -> None:
        if not self._paused and not self._transport.is_closing():
            self._paused = True
            self._transport.pause_reading()

    def _resume_client(self) -> None:
        if self._paused:
            self._paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    async def _drain_engine(self, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the engine went away: the engine -> client pump ends the tunnel
        finally:
            self._drain_task = None
            self._resume_client()

    def _shutdown_engine_write(self) -> None:
        writer = self._engine_writer
        if writer is None:
            return  # done in attach()
        with contextlib.suppress(OSError, RuntimeError):
            if not writer.is_closing() and writer.can_write_eof():
                writer.write_eof()

    def release(self) -> None:
        """Give the transport back to aiohttp (the engine declined the upgrade)."""
        if not self.client_lost.is_set() and self._transport.get_protocol() is self:
            self._transport.set_protocol(self._original)
            self._resume_client()

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._engine_reader = reader
        self._engine_writer = writer
        pending, self._pending = bytes(self._pending), bytearray()
        self._resume_client()
        if pending:
            self.data_received(pending)
        if self.client_read_done.is_set():
            self._shutdown_engine_write()

    def abort(self) -> None:
        if self._engine_writer is not None:
            self._engine_writer.close()
        if not self._transport.is_closing():
            self._transport.close()

    async def pump(self) -> None:
        assert self._engine_reader is not None
        while True:
            data = await self._engine_reader.read(_READ_CHUNK)
            if not data or self._transport.is_closing():
                break
            self._transport.write(data)
            await self._can_write.wait()
        if not self._transport.is_closing():
            if self._transport.can_write_eof():
                self._transport.write_eof()
            else:
                self._transport.close()

    async def run(self) -> None:
        """Until both directions are finished, or either side is gone."""
        pump = asyncio.ensure_future(self.pump())
        lost = asyncio.ensure_future(self.client_lost.wait())
        try:
            await asyncio.wait({pump, lost}, return_when=asyncio.FIRST_COMPLETED)
            if pump.done() and pump.exception() is None and not self.client_lost.is_set():
                # The engine is done sending; the client finishes (half-closes or closes) once it has
                # read everything.
                await self.client_read_done.wait()
        finally:
            for task in (pump, lost):
                task.cancel()
            await asyncio.gather(pump, lost, return_exceptions=True)
            if self._drain_task is not None:
                self._drain_task.cancel()
            if self._engine_writer is not None:
                self._engine_writer.close()


class _HijackedResponse(web.StreamResponse):
    """Returned once a connection has been hijacked: the head and the tunnelled bytes were written by the
    proxy straight to the transport, so aiohttp must write nothing more, and must close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status=status, reason=reason or None)
        self.force_close()

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class EngineProxy:
    """Forwards requests to the local Docker Engine at ``engine_host`` (``unix:///var/run/docker.sock``,
    ``tcp://host:port``, or None when the node has no engine)."""

    def __init__(self, engine_host: str | None) -> None:
        self._engine_host = engine_host
        self._address = _parse_engine_host(engine_host) if engine_host else None
        self._session: aiohttp.ClientSession | None = None
        self._engine_version: tuple[int, int] | None = None
        self._splices: set[_Splice] = set()
        self._closed = False

    # ---------------------------------------------------------------- public

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self._address is None or self._closed:
            path = request.get("route_path") or _VERSION_PREFIX.sub("", request.path)
            if not is_engine_route(request.method, path):
                return _error(404, "page not found")  # what the engine would answer, had it been there
            return _error(NO_ENGINE_STATUS, NO_ENGINE_MESSAGE)
        upgrade = _is_upgrade(request)
        try:
            path = await self._target_path(request.raw_path)
            if upgrade:
                return await self._hijack(request, path)
            return await self._forward(request, path)
        except _EngineUnreachable as exc:
            resp = _error(ENGINE_UNREACHABLE_STATUS, str(exc))
        except _BadGateway as exc:
            resp = _error(ENGINE_BAD_GATEWAY_STATUS, str(exc))
        if upgrade:
            resp.force_close()  # the connection was meant to become a raw stream: do not reuse it
        return resp

    async def call(self, request: web.Request, body: bytes | None, raw_path: str | None = None,
                   method: str | None = None) -> tuple[int, bytes, str]:
        """One buffered exchange with the engine for a request Shoal rewrites (a container create on a swarm
        network): the client's headers, `body` instead of the client's, `raw_path` (default: the client's; the
        API version prefix is lowered as for proxied requests). Returns (status, body, content type).
        Raises ShoalError (503/502 as `handle` answers) when the engine cannot be reached."""
        if self._address is None or self._closed:
            raise NotImplementedFeature(NO_ENGINE_MESSAGE)  # 501, as `handle` answers
        try:
            path = await self._target_path(raw_path or request.raw_path)
        except _EngineUnreachable as exc:
            raise Unavailable(str(exc)) from None
        except _BadGateway as exc:
            raise ShoalError(str(exc)) from None
        headers = _forwarded_request_headers(request)
        headers.popall("Content-Length", None)
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = URL(self._address.base_url + path, encoded=True)
        try:
            async with self._get_session().request(method or request.method, url, headers=headers, data=body,
                                                   allow_redirects=False) as upstream:
                data = await upstream.read()
                return upstream.status, data, upstream.headers.get("Content-Type", "application/json")
        except aiohttp.ClientConnectorError as exc:
            self._engine_version = None
            raise Unavailable(f"cannot reach {self._describe()}: {exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise ShoalError(f"{self._describe()} failed: {exc!r}") from None

    async def close(self) -> None:
        self._closed = True
        for splice in list(self._splices):
            splice.abort()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---------------------------------------------------------------- plumbing

    def _describe(self) -> str:
        return f"the local Docker Engine at {self._engine_host}"

    def _get_session(self) -> aiohttp.ClientSession:
        assert self._address is not None
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector
            if self._address.unix_path is not None:
                connector = aiohttp.UnixConnector(path=self._address.unix_path)
            else:
                connector = aiohttp.TCPConnector()
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_connect=30, sock_read=None),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                max_field_size=64 * 1024,
            )
        return self._session

    async def _engine_max_version(self) -> tuple[int, int] | None:
        if self._engine_version is not None:
            return self._engine_version
        assert self._address is not None
        try:
            async with self._get_session().get(self._address.base_url + "/_ping") as resp:
                await resp.read()
                value = resp.headers.get("Api-Version", "")
        except aiohttp.ClientConnectorError as exc:
            raise _EngineUnreachable(f"cannot reach {self._describe()}: {exc.os_error}") from exc
        except aiohttp.ClientError as exc:
            raise _BadGateway(f"{self._describe()} failed: {exc!r}") from exc
        m = re.fullmatch(r"(\d+)\.(\d+)", value.strip())
        if m is None:
            return None
        self._engine_version = (int(m.group(1)), int(m.group(2)))
        return self._engine_version

    async def _target_path(self, raw_path: str) -> str:
        """The client's raw path and query, with a /vX.Y prefix lowered to the engine's maximum."""
        m = _VERSION_PREFIX.match(raw_path)
        if m is None:
            return raw_path
        engine = await self._engine_max_version()
        client = (int(m.group(1)), int(m.group(2)))
        if engine is None or client <= engine:
            return raw_path
        return f"/v{engine[0]}.{engine[1]}" + raw_path[m.end() :]

    # ---------------------------------------------------------------- plain requests

    async def _forward(self, request: web.Request, path: str) -> web.StreamResponse:
        assert self._address is not None
        url = URL(self._address.base_url + path, encoded=True)
        data = request.content if request.body_exists else None
        try:
            upstream = await self._get_session().request(
                request.method,
                url,
                headers=_forwarded_request_headers(request),
                data=data,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectorError as exc:
            self._engine_version = None
            raise _EngineUnreachable(f"cannot reach {self._describe()}: {exc.os_error}") from exc
        except aiohttp.ClientError as exc:
            raise _BadGateway(f"{self._describe()} failed: {exc!r}") from exc
        complete = False
        try:
            keep_length = "Content-Length" in upstream.headers
            resp = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=_forwarded_response_headers(upstream.raw_headers, keep_length),
            )
            try:
                await resp.prepare(request)
                if keep_length:
                    # Bounded body: relay it, nothing to watch.
                    async for chunk in upstream.content.iter_any():
                        await resp.write(chunk)
                elif not await self._relay_stream(request, upstream, resp):
                    return resp
                await resp.write_eof()
            except ConnectionError:
                return resp  # the client went away; aiohttp notices and drops the connection quietly
            complete = True
            return resp
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()  # drop the engine connection: it stops streaming logs/events

    async def _relay_stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, resp: web.StreamResponse
    ) -> bool:
        """Copy an open-ended body (logs -f, events, stats, pull progress) as bytes arrive, until the engine
        ends it (True) or the client disconnects (False)."""

        async def copy() -> None:
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)

        transport = request.transport
        original = transport.get_protocol() if transport is not None else None
        if transport is None or not isinstance(original, asyncio.Protocol):
            await copy()
            return True
        watcher = _DisconnectWatcher(original)
        transport.set_protocol(watcher)
        copy_task = asyncio.ensure_future(copy())
        lost_task = asyncio.ensure_future(watcher.lost.wait())
        try:
            await asyncio.wait({copy_task, lost_task}, return_when=asyncio.FIRST_COMPLETED)
            if not copy_task.done():
                return False
            try:
                copy_task.result()
            except ConnectionError:
                return False
            return True
        finally:
            for task in (copy_task, lost_task):
                task.cancel()
            await asyncio.gather(copy_task, lost_task, return_exceptions=True)
            if not transport.is_closing() and transport.get_protocol() is watcher:
                transport.set_protocol(original)

    # ---------------------------------------------------------------- upgrades

    async def _open_raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self._address is not None
        try:
            if self._address.unix_path is not None:
                return await asyncio.open_unix_connection(self._address.unix_path, limit=_MAX_HEAD)
            return await asyncio.open_connection(self._address.host, self._address.port, limit=_MAX_HEAD)
        except OSError as exc:
            self._engine_version = None
            raise _EngineUnreachable(f"cannot reach {self._describe()}: {exc}") from exc

    def _raw_request_head(self, request: web.Request, path: str, body: bytes) -> bytes:
        assert self._address is not None
        lines = [f"{request.method} {path} HTTP/1.1".encode("latin-1")]
        lines.append(b"Host: " + URL(self._address.base_url).raw_authority.encode("latin-1"))
        for name, value in request.raw_headers:
            # Connection/Upgrade are kept here: they are the point of the request.
            if name.lower() in (b"host", b"content-length", b"transfer-encoding", b"expect"):
                continue
            lines.append(name + b": " + value)
        if body or request.method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _hijack(self, request: web.Request, path: str) -> web.StreamResponse:
        """Tunnel an upgraded connection (attach, exec start, ...) to the engine as raw bytes.

        Technique (aiohttp 3.14 has no public hijack API for servers, so this uses asyncio's transport and
        protocol seams, as aiohttp's own WebSocketResponse does for its parser):

        1. Read the (small) request body through aiohttp as usual.
        2. Take the client's transport over: ``RequestHandler.set_parser`` hands over the bytes aiohttp
           already buffered after the upgrade request (its ``_message_tail``), then
           ``transport.set_protocol(_Splice)`` routes every later callback to us. This matters for
           half-close: aiohttp's ``RequestHandler.eof_received`` returns None, which makes asyncio close the
           whole socket when the CLI does CloseWrite after stdin EOF, losing the output still to come;
           ``_Splice.eof_received`` shuts the engine's write side instead and returns True. When the
           client socket closes, ``_Splice`` forwards ``connection_lost`` to the RequestHandler so aiohttp
           does its bookkeeping.
           Caveat: aiohttp's C parser only honours ``Upgrade: websocket``; with ``Upgrade: tcp`` it drops
           bytes that arrive in the *same read* as the request head. The docker CLI never sends any before
           the 101 arrives (Go's hijack waits for the response), and everything arriving after the
           takeover is buffered by ``_Splice``, including a half-close.
        3. Open a raw connection to the engine (asyncio streams), write the HTTP request ourselves and read
           the response head. If the engine did not switch protocols (e.g. 404/409 with a JSON body), give
           the transport back to aiohttp and answer with an ordinary response (connection closed after).
        4. Otherwise write the engine's head verbatim to the client and splice until both directions are
           finished or either side is gone. The handler stays running for the life of the tunnel and
           finally returns a ``_HijackedResponse`` whose ``prepare``/``write_eof`` write nothing and whose
           keep-alive is off, so aiohttp just closes the transport.
        """
        body = await request.read()
        transport = request.transport
        protocol = request.protocol
        if not isinstance(transport, asyncio.Transport) or transport.is_closing():
            return _client_gone()
        tail = _TailCollector()
        with contextlib.suppress(AttributeError, AssertionError):
            cast(Any, protocol).set_parser(tail)
        splice = _Splice(protocol, transport)
        transport.set_protocol(splice)
        if tail.data:
            splice.data_received(bytes(tail.data))
        self._splices.add(splice)
        try:
            try:
                reader, writer = await self._open_raw()
            except _EngineUnreachable:
                splice.release()
                raise
            try:
                status, reason, head, resp = await self._upgrade_request(request, path, body, reader, writer)
            except BaseException:
                splice.release()
                writer.close()
                raise
            if resp is not None:
                splice.release()
                writer.close()
                resp.force_close()
                return resp
            if transport.is_closing():
                writer.close()
                return _client_gone()
            transport.write(head)
            splice.attach(reader, writer)
            await splice.run()
            return _HijackedResponse(status, reason)
        finally:
            self._splices.discard(splice)

    async def _upgrade_request(
        self,
        request: web.Request,
        path: str,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> tuple[int, str, bytes, web.Response | None]:
        """Send the upgrade request to the engine; return its status, reason and raw head, and a ready
        response when the engine answered without switching to a raw stream."""
        try:
            writer.write(self._raw_request_head(request, path, body) + body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise _BadGateway(f"{self._describe()} failed: {exc!r}") from exc
        status, reason, headers = _parse_response_head(head)
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        # 101 is the norm; 200 without a length is the pre-1.24 raw stream (dockerd still hijacks).
        if status == 101 or (200 <= status < 300 and "Content-Length" not in headers and not chunked):
            return status, reason, head, None
        try:
            if chunked:
                resp_body = await _read_chunked(reader)
            elif "Content-Length" in headers:
                resp_body = await reader.readexactly(int(headers["Content-Length"]))
            else:
                resp_body = await reader.read(_MAX_ERROR_BODY)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise _BadGateway(f"{self._describe()} failed: {exc!r}") from exc
        raw = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        resp = web.Response(
            status=status,
            reason=reason or None,
            body=resp_body,
            headers=_forwarded_response_headers(raw, keep_length=False),
        )
        return status, reason, head, resp
