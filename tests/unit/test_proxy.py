"""EngineProxy against a fake Docker Engine (aiohttp on a unix socket); no dockerd needed."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from shoal.engineapi.proxy import (
    ENGINE_UNREACHABLE_STATUS,
    NO_ENGINE_MESSAGE,
    NO_ENGINE_STATUS,
    EngineProxy,
)

ENGINE_VERSION = "1.41"


# ------------------------------------------------------------------ fake engine


class _Echo(asyncio.Protocol):
    """Raw side of the fake engine's upgrade endpoint: echoes bytes; on the client's half-close it sends a
    trailer and half-closes too, like dockerd after the container's stdin hits EOF."""

    def __init__(self, transport: asyncio.Transport, original: asyncio.BaseProtocol) -> None:
        self.transport = transport
        self.original = original
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.write(b"<eof seen>")
        self.transport.close()  # flushes, then closes: the proxy must relay this as EOF
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.original.connection_lost(exc)


class _Detached(web.StreamResponse):
    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


@dataclass
class FakeEngine:
    stream_release: asyncio.Event = field(default_factory=asyncio.Event)
    upload_first_chunk: asyncio.Event = field(default_factory=asyncio.Event)
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)
    slow_attach_started: asyncio.Event = field(default_factory=asyncio.Event)
    slow_attach_release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_ping", self.ping)
        app.router.add_post("/{v}/containers/missing/attach", self.attach_missing)
        app.router.add_post("/{v}/containers/{id}/attach", self.attach)
        app.router.add_get("/{v}/stream", self.stream)
        app.router.add_post("/{v}/upload", self.upload)
        app.router.add_route("*", "/{tail:.*}", self.echo_request)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="OK", headers={"Api-Version": ENGINE_VERSION})

    async def echo_request(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": (await request.read()).decode(),
            },
            headers={"X-Engine": "fake", "Connection": "keep-alive, X-Hop", "X-Hop": "1"},
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first\n")
        try:
            await self.stream_release.wait()
            await resp.write(b"second\n")
            await resp.write_eof()
        finally:
            self.stream_closed.set()
        return resp

    async def upload(self, request: web.Request) -> web.Response:
        total = bytearray()
        async for chunk in request.content.iter_any():
            total += chunk
            self.upload_first_chunk.set()
        return web.json_response(
            {"size": len(total), "data": total.decode(), "te": request.headers.get("Transfer-Encoding")}
        )

    async def attach_missing(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "No such container: missing"}, status=404)

    async def attach(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] == "slow":
            self.slow_attach_started.set()
            await self.slow_attach_release.wait()
        transport = request.transport
        assert isinstance(transport, asyncio.Transport)
        transport.write(
            b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\nX-Path: " + request.raw_path.encode() + b"\r\n\r\n"
        )
        echo = _Echo(transport, request.protocol)
        transport.set_protocol(echo)
        await echo.closed
        resp = _Detached(status=101)
        resp.force_close()
        return resp


async def _serve(app: web.Application, path: str, handler_cancellation: bool = False) -> web.AppRunner:
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    return runner


@dataclass
class Env:
    engine: FakeEngine
    proxy_sock: str
    engine_sock: str
    handled: asyncio.Event

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.proxy_sock))


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    tmp = tempfile.mkdtemp(prefix="px", dir="/tmp")  # short: unix socket paths are limited to 107 bytes
    engine = FakeEngine()
    engine_sock = str(Path(tmp) / "engine.sock")
    proxy_sock = str(Path(tmp) / "proxy.sock")
    # handler_cancellation: the fake engine's stream handler is cancelled when the proxy hangs up.
    engine_runner = await _serve(engine.app(), engine_sock, handler_cancellation=True)
    proxy = EngineProxy(f"unix://{engine_sock}")
    handled = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await proxy.handle(request)
        finally:
            handled.set()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    proxy_runner = await _serve(app, proxy_sock)
    try:
        yield Env(engine, proxy_sock, engine_sock, handled)
    finally:
        engine.stream_release.set()
        await proxy.close()
        await proxy_runner.cleanup()
        await engine_runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ plain requests


async def test_forwards_method_path_query_and_headers(env: Env) -> None:
    async with (
        env.session() as s,
        s.post(
            URL("http://docker/v1.41/containers/create?name=a%2Fb&x=1&x=2", encoded=True),
            data=b'{"Image":"busybox"}',
            headers={"Content-Type": "application/json", "X-Registry-Auth": "abc", "Keep-Alive": "5"},
        ) as resp,
    ):
        assert resp.status == 200
        got = await resp.json()
        assert resp.headers["X-Engine"] == "fake"
        assert "X-Hop" not in resp.headers  # named in Connection: hop-by-hop
    assert got["method"] == "POST"
    assert got["raw_path"] == "/v1.41/containers/create?name=a%2Fb&x=1&x=2"
    assert got["body"] == '{"Image":"busybox"}'
    names = {k.lower(): v for k, v in got["headers"]}
    assert names["x-registry-auth"] == "abc"
    assert names["content-type"] == "application/json"
    assert "keep-alive" not in names


async def test_version_prefix_rewritten_only_when_higher(env: Env) -> None:
    async with env.session() as s:
        async with s.get("http://docker/v1.51/containers/json?all=1") as resp:
            assert (await resp.json())["raw_path"] == "/v1.41/containers/json?all=1"
        async with s.get("http://docker/v1.24/info") as resp:
            assert (await resp.json())["raw_path"] == "/v1.24/info"
        async with s.get("http://docker/version") as resp:
            assert (await resp.json())["raw_path"] == "/version"
        async with s.get("http://docker/v1.99") as resp:
            assert (await resp.json())["raw_path"] == "/v1.41"


async def test_streaming_response_is_not_buffered(env: Env) -> None:
    async with env.session() as s, s.get("http://docker/v1.41/stream") as resp:
        assert await resp.content.readline() == b"first\n"  # arrives while the engine still waits
        env.engine.stream_release.set()
        assert await resp.content.read() == b"second\n"


async def test_client_disconnect_drops_engine_stream(env: Env) -> None:
    async with env.session() as s:
        resp = await s.get("http://docker/v1.41/stream")
        assert await resp.content.readline() == b"first\n"
        resp.close()  # like Ctrl-C on `docker logs -f`
    await asyncio.wait_for(env.handled.wait(), 10)
    # The proxy closed its engine connection: the fake engine's handler gets cancelled/finishes.
    await asyncio.wait_for(env.engine.stream_closed.wait(), 10)


async def test_upload_is_streamed_chunked(env: Env) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"part-one;"
        # The engine has the first chunk before the client sends the second one: no request buffering.
        await env.engine.upload_first_chunk.wait()
        yield b"part-two"

    async with (
        env.session() as s,
        s.post("http://docker/v1.41/upload", data=body()) as resp,
    ):
        got = await resp.json()
    assert got == {"size": 17, "data": "part-one;part-two", "te": "chunked"}


async def test_no_engine_answers_501() -> None:
    proxy = EngineProxy(None)
    tmp = tempfile.mkdtemp(prefix="px", dir="/tmp")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = await _serve(app, f"{tmp}/p.sock")
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=f"{tmp}/p.sock")) as s,
            s.get("http://docker/v1.45/containers/json") as resp,
        ):
            assert resp.status == NO_ENGINE_STATUS
            # the docker CLI decodes an error body only with exactly this content type
            assert resp.headers["Content-Type"] == "application/json"
            assert await resp.json() == {"message": NO_ENGINE_MESSAGE}
    finally:
        await proxy.close()
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_unreachable_engine_answers_503() -> None:
    tmp = tempfile.mkdtemp(prefix="px", dir="/tmp")
    proxy = EngineProxy(f"unix://{tmp}/nothing.sock")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = await _serve(app, f"{tmp}/p.sock")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=f"{tmp}/p.sock")) as s:
            for path in ("/v1.45/containers/json", "/containers/json"):
                async with s.get("http://docker" + path) as resp:
                    assert resp.status == ENGINE_UNREACHABLE_STATUS
                    message = (await resp.json())["message"]
                    assert "cannot reach the local Docker Engine" in message
            async with s.post(
                "http://docker/containers/c/attach", headers={"Connection": "Upgrade", "Upgrade": "tcp"}
            ) as resp:
                assert resp.status == ENGINE_UNREACHABLE_STATUS
    finally:
        await proxy.close()
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ upgrades


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _upgrade(env: Env, path: str, body: bytes = b"") -> Conn:
    reader, writer = await asyncio.open_unix_connection(env.proxy_sock)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: api.moby.localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return reader, writer


async def test_hijacked_echo_with_half_close(env: Env) -> None:
    reader, writer = await _upgrade(env, "/v1.51/containers/c1/attach?stream=1&stdin=1", b"{}")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n")
    assert b"Upgrade: tcp" in head
    assert b"X-Path: /v1.41/containers/c1/attach?stream=1&stdin=1" in head  # version rewritten
    writer.write(b"hello ")
    await writer.drain()
    assert await reader.readexactly(6) == b"hello "
    writer.write(b"world")
    writer.write_eof()  # CloseWrite: the output must still come back
    assert await reader.read() == b"world<eof seen>"
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(env.handled.wait(), 10)


async def test_hijack_client_bytes_and_eof_before_engine_answers(env: Env) -> None:
    """What the client sends (and its half-close) while the engine has not answered yet is kept."""
    reader, writer = await _upgrade(env, "/v1.41/containers/slow/attach")
    await env.engine.slow_attach_started.wait()  # the proxy has taken the client connection over
    writer.write(b"early")
    writer.write_eof()
    await writer.drain()
    env.engine.slow_attach_release.set()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert await reader.read() == b"early<eof seen>"
    writer.close()


async def test_declined_upgrade_is_a_plain_error(env: Env) -> None:
    async with (
        env.session() as s,
        s.post(
            "http://docker/v1.41/containers/missing/attach",
            headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        ) as resp,
    ):
        assert resp.status == 404
        assert json.loads(await resp.text()) == {"message": "No such container: missing"}
