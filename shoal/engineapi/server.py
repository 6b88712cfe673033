"""The node's Engine API server (aiohttp): version prefixes, errors in dockerd's shape, and routing.

Paths may carry a `/vX.Y` prefix (the stock CLI negotiates through `/_ping` and then uses versioned
paths); the prefix is stripped into `request["api_version"]`. Swarm endpoints are served here; the
other paths of the Engine API go to the local Docker Engine through `EngineProxy`, and anything else
(an unknown path, a method a swarm path does not have, `/v1/...`) is dockerd's 404 "page not found".
Errors from the core (`ShoalError`) become `{"message": ...}` with their status; anything unexpected
becomes a 500 with the same shape and is logged, never a crash or a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from shoal import __version__
from shoal.api import messages as M
from shoal.engineapi.engine_client import EngineClient
from shoal.engineapi.forward import FORWARDED_HEADER
from shoal.engineapi.nodeapi import NodeAPI
from shoal.engineapi.proxy import EngineProxy
from shoal.errors import NotLeader, ShoalError, Unavailable
from shoal.manager.raft.node import NotLeaderError

log = logging.getLogger(__name__)

# The newest version ../shared/engine-api/swagger.yaml describes (its info.version); answers follow each
# version's rules below it (tests/differential/test_versions.py checks 1.41, 1.47 and this one).
API_VERSION = "1.56"
MIN_API_VERSION = "1.24"
_VERSION_RE = re.compile(r"^/v(\d+\.\d+)(/.*)$")
_BAD_VERSION_RE = re.compile(r"^/v[0-9.]+(/|$)")  # /v1/..., /v1.2.3/...: a version prefix dockerd has no page for
# The first path segment of every endpoint a Docker Engine serves: other paths are not proxied (the engine, or
# without one Shoal, answers 404 "page not found" as dockerd's router does).
_ENGINE_ROOTS = frozenset({
    "_ping", "auth", "build", "commit", "configs", "containers", "distribution", "events", "exec", "grpc",
    "images", "info", "networks", "nodes", "plugins", "secrets", "services", "session", "swarm", "system",
    "tasks", "version", "volumes",
})
# Paths Shoal answers in full: a method or sub-path it has no route for is not the engine's either.
_SWARM_ROOTS = frozenset({"configs", "nodes", "secrets", "services", "swarm", "tasks", "_shoal"})
PAGE_NOT_FOUND = "page not found"
# Request bodies Shoal reads (swarm objects, a container create) are refused past this with a 413 before they
# are buffered further: the store takes no object larger than 1.5 MiB encoded (MAX_OBJECT_BYTES), and this
# leaves room for a pretty-printed body of one. Proxied engine requests (build contexts, image loads) stream and
# are not limited. The node RPC carries a forwarded body of this size (shoal.rpc.server.FORWARD_MAX_BYTES).
MAX_BODY_BYTES = 4 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# `observe(method, route, status, seconds)` for each request answered: `route` is the path template of the
# endpoint (`/services/{id}`, never an ID), "proxy" for what went to the local engine, "unmatched" otherwise.
RequestObserver = Callable[[str, str, int, float], None]
ROUTE_KEY = "route"

NODE_KEY: web.AppKey[NodeAPI] = web.AppKey("node", NodeAPI)
PROXY_KEY: web.AppKey[EngineProxy] = web.AppKey("proxy", EngineProxy)
ENGINE_KEY: web.AppKey[EngineClient] = web.AppKey("engine", EngineClient)


def json_response(data: object, status: int = 200) -> web.Response:
    # Exactly "application/json": the Go client only decodes error bodies with that content type.
    return web.Response(body=json.dumps(data, separators=(",", ":")).encode() + b"\n", status=status,
                        headers={"Content-Type": "application/json"})


def error_response(status: int, message: str) -> web.Response:
    return json_response({"message": message}, status=status)


def _version_tuple(v: str) -> tuple[int, int]:
    major, minor = v.split(".")
    return int(major), int(minor)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ShoalError as e:
        return error_response(e.status, e.message)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    except web.HTTPException:
        raise
    except json.JSONDecodeError as e:
        return error_response(400, f"invalid JSON: {e.msg}")
    except (ConnectionResetError, BrokenPipeError):
        raise
    except Exception as e:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(500, f"internal error: {e}")


def timing_middleware(observe: RequestObserver) -> Middleware:
    """Each request's method, route template, status and seconds to `observe` (a stream's seconds run to its
    end). A request whose client went away before the answer is not counted."""
    @web.middleware
    async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        except (asyncio.CancelledError, ConnectionResetError, BrokenPipeError):
            status = 0
            raise
        finally:
            if status:
                observe(request.method, request.get(ROUTE_KEY, "unmatched"), status, time.perf_counter() - t0)

    return timed


def make_app(node: NodeAPI, proxy: EngineProxy, engine: EngineClient,
             observe: RequestObserver | None = None) -> web.Application:
    from shoal.engineapi import routes

    middlewares: list[Middleware] = [errors_middleware]
    if observe is not None:
        middlewares.insert(0, timing_middleware(observe))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[NODE_KEY] = node
    app[PROXY_KEY] = proxy
    app[ENGINE_KEY] = engine
    table = routes.route_table()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        node = app[NODE_KEY]
        path = request.path
        m = _VERSION_RE.match(path)
        version = API_VERSION
        if m is not None:
            version, path = m.group(1), m.group(2)
            if _version_tuple(version) > _version_tuple(API_VERSION):
                return error_response(400, f"client version {version} is too new. Maximum supported API "
                                           f"version is {API_VERSION}")
            if _version_tuple(version) < _version_tuple(MIN_API_VERSION):
                return error_response(400, f"client version {version} is too old. Minimum supported API "
                                           f"version is {MIN_API_VERSION}, please upgrade your client to a "
                                           f"newer version")
        elif _BAD_VERSION_RE.match(path) is not None:
            return error_response(404, PAGE_NOT_FOUND)
        request["api_version"] = version
        request["route_path"] = path
        for method, pattern, fn, leader, template in table:
            if method != request.method and not (method == "GET" and request.method == "HEAD"):
                continue
            mm = pattern.match(path)
            if mm is not None:
                request[ROUTE_KEY] = template
                request["params"] = mm.groupdict()
                if leader and node.forwarder is not None:
                    return await _on_leader(request, fn)
                return await fn(request)
        root = path.split("/", 2)[1] if path.startswith("/") else ""
        if root not in _ENGINE_ROOTS or root in _SWARM_ROOTS:
            return error_response(404, PAGE_NOT_FOUND)
        request[ROUTE_KEY] = "proxy"
        return await proxy.handle(request)

    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


class _NoConnection(BaseProtocol):
    """The connection of a request run in process: none (no transport, nothing to pause), a peer named after
    the manager that forwarded it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, peer: str) -> None:
        super().__init__(loop)
        self.ssl_context = None
        self.peername = peer
        self.sockname = None

    def pause_reading(self) -> None:
        return None  # the whole body is in the payload already: there is no reading to pause

    def resume_reading(self, resume_parser: bool = True) -> None:
        return None


class _NoStream(AbstractStreamWriter):
    """A request run in process answers whole (`web.Response`): a handler that streams its answer is a bug
    there, an error rather than a hang."""

    async def write(self, chunk: Any) -> None:
        raise RuntimeError("a request run in process cannot stream its answer")

    async def write_eof(self, chunk: bytes = b"") -> None:
        raise RuntimeError("a request run in process cannot stream its answer")

    async def drain(self) -> None:
        return None

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        return None

    def enable_chunking(self) -> None:
        return None

    async def write_headers(self, status_line: str, headers: Any) -> None:
        raise RuntimeError("a request run in process cannot stream its answer")


class InProcessAPI:
    """Runs an Engine API request on this daemon's own app without a connection: the leader's side of a forwarded
    write (`shoal.engineapi.forward.Forwarder.serve`). It goes through the same middlewares, version check, routing
    and leader check as a request on the socket (the app's own `_handle`, which aiohttp's server calls), so the
    answer, error translation included, is the one the socket gives; what is saved is a second HTTP request per
    forwarded write (client, connection, parsing) on the leader, the manager doing the most work. The caller has
    authenticated the forwarding manager (mutual TLS on the Raft service); the Engine API has no per-request
    identity to carry (its socket's access is the daemon's, as dockerd's), so the request's headers, the
    forwarding mark among them, are all there is. Writes only: their answers are whole; reads may stream (logs,
    events) and keep the socket."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def run(self, method: str, path: str, headers: dict[str, str], body: bytes,
                  peer: str) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of the answer."""
        loop = asyncio.get_running_loop()
        protocol = _NoConnection(loop, peer)
        hdr = CIMultiDict(headers)
        hdr[hdrs.CONTENT_LENGTH] = str(len(body))
        message = RawRequestMessage(method, path, HttpVersion11, CIMultiDictProxy(hdr),
                                    tuple((k.encode(), v.encode()) for k, v in hdr.items()), False, None, False,
                                    False, URL(path))
        payload = StreamReader(protocol, 2 ** 16, loop=loop)
        if body:
            payload.feed_data(body)
        payload.feed_eof()
        task = asyncio.current_task()
        assert task is not None
        request = web.Request(message, payload, protocol, _NoStream(), task, loop,  # type: ignore[arg-type]
                              client_max_size=MAX_BODY_BYTES)
        try:
            resp = await self.app._handle(request)
        except web.HTTPException as e:
            resp = e
        if not isinstance(resp, web.Response) or resp.prepared:
            log.error("%s %s run in process did not answer whole (%s)", method, path, type(resp).__name__)
            resp = error_response(500, "internal error: the answer of a forwarded request was streamed")
        raw = resp.body
        if raw is None:
            data = b""
        elif isinstance(raw, bytes | bytearray):
            data = bytes(raw)
        else:
            log.error("%s %s run in process answered a body of %s", method, path, type(raw).__name__)
            resp = error_response(500, "internal error: the answer of a forwarded request was not bytes")
            data = bytes(resp.body or b"")  # type: ignore[arg-type]
        out = dict(resp.headers.items())
        if data and hdrs.CONTENT_TYPE not in resp.headers:
            out[hdrs.CONTENT_TYPE] = resp.content_type + (f"; charset={resp.charset}" if resp.charset else "")
        return resp.status, out, data


async def _on_leader(request: web.Request, fn: Handler) -> web.StreamResponse:
    """A swarm request on a manager: answered here when this manager leads (reads after a read barrier, so they
    see every write committed before they arrived, wherever it was made), else by the leader."""
    node: NodeAPI = request.app[NODE_KEY]
    if not node.is_leader:
        return await forward_to_leader(request)
    try:
        if request.method in ("GET", "HEAD"):
            await node.read_barrier()
        return await fn(request)
    except NotLeaderError:
        # Leadership moved between the check and the first proposal (nothing was written): ask the new leader.
        return await forward_to_leader(request)


async def forward_to_leader(request: web.Request) -> web.StreamResponse:
    """Relay this request to the Raft leader and its answer (streamed: logs follow) back to the client."""
    node: NodeAPI = request.app[NODE_KEY]
    forwarder = node.forwarder
    if forwarder is None:
        raise Unavailable(M.NOT_A_SWARM_MANAGER)
    if request.headers.get(FORWARDED_HEADER):
        raise NotLeader("this manager is no longer the swarm leader; try again")  # no second hop
    await node.wait_for_leader()
    body = await request.read()
    it = forwarder.forward(request.method, request.raw_path, dict(request.headers), body).__aiter__()
    head = await it.__anext__()  # errors here (no leader, leader unreachable) become an error answer
    headers = {k: v for k, v in head.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
    length = next((v for k, v in head.headers.items() if k.lower() == "content-length"), None)
    if length is not None and request.method != "HEAD":  # a HEAD answer states a length and has no body
        # An answer of known length (every write's) is relayed only once it is whole: a leader lost after its
        # status line must not turn into the status with an empty or cut body (a 201 without the new ID).
        data = bytearray(head.data)
        try:
            async for chunk in it:
                data += chunk.data
        except ShoalError as e:
            log.info("forwarded %s %s: the leader was lost before it answered in full: %s", request.method,
                     request.path, e)
        if len(data) != int(length):
            raise Unavailable(M.LEADER_LOST_MID_ANSWER)
        return web.Response(status=head.status or 200, headers=headers, body=bytes(data))
    resp = web.StreamResponse(status=head.status or 200, headers=headers)
    await resp.prepare(request)
    if head.data:
        await resp.write(head.data)
    try:
        async for chunk in it:
            if chunk.data:
                await resp.write(chunk.data)
    except ShoalError as e:
        log.info("forwarded %s %s ended early: %s", request.method, request.path, e)
    await resp.write_eof()
    return resp


def ping_headers(node: NodeAPI) -> dict[str, str]:
    swarm = "active/manager" if node.manager is not None else \
        "active/worker" if node.state == "active" else "inactive"
    return {
        "API-Version": API_VERSION,
        "Docker-Experimental": "false",
        "OSType": "linux",
        "Swarm": swarm,
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
        "Builder-Version": "1",
    }


def version_body() -> dict[str, Any]:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "Platform": {"Name": "Shoal"},
        "Components": [{"Name": "Shoal", "Version": __version__, "Details": {
            "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux", "Arch": arch}}],
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "shoal",
        "GoVersion": f"python{platform.python_version()}",
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": platform.release(),
        "BuildTime": "",
    }
