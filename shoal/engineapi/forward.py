"""Requests a manager that does not lead forwards to the leader, on mutual TLS: writes on the leader's shared
`ForwardMux` stream (shoal.rpc.forwardmux), reads (which may stream without end) each on a `Forward` call of
its own. The leader runs a write in process on its own Engine API app (`LocalAPI`: the same middlewares,
routing and leader check as its socket, without a second HTTP request), a read on its own Engine API socket,
so each is exactly the request the client sent; the answer comes back whole (a write's) or in chunks, status
and headers first."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import aiohttp

from shoal.errors import ShoalError
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc.forwardmux import ForwardMux, MuxUnsupported
from shoal.rpc.raft import Creds, LeaderChannels, SecureAddrs
from shoal.rpc.raft import forward as raft_forward

FORWARDED_HEADER = "X-Shoal-Forwarded"  # set on a request a manager forwarded: never forwarded a second time
_FORWARD_CHUNK = 1 << 20  # a forwarded answer's body up to this goes in one message with its head
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"})


class LocalAPI(Protocol):
    """This daemon's Engine API app, run in process (shoal.engineapi.server.InProcessAPI)."""

    async def run(self, method: str, path: str, headers: dict[str, str], body: bytes,
                  peer: str) -> tuple[int, dict[str, str], bytes]: ...


class Forwarder:
    """Both ends of forwarding for one manager: `forward` sends a request to the leader, `serve` (the Raft
    service's hook, on the leader) runs one on this node's Engine API socket."""

    def __init__(self, *, node_id: str, leader_addr: Callable[[], str], no_leader: str,
                 secure: SecureAddrs, credentials: Callable[[], Creds],
                 leading: Callable[[], bool], not_leader: Callable[[], Exception],
                 api_socket: Path | None, local_api: Callable[[], LocalAPI | None] = lambda: None) -> None:
        self.node_id = node_id
        self.leader_addr = leader_addr
        self.no_leader = no_leader
        self.secure = secure
        self.credentials = credentials
        self.leading = leading
        self.not_leader = not_leader
        self.api_socket = api_socket
        self.local_api = local_api  # the app, once it serves: forwarded writes run on it in process
        self._channels: LeaderChannels | None = None  # to the leader
        self._mux: ForwardMux | None = None  # writes to the leader, on one stream (shoal.rpc.forwardmux)
        self._api_session: aiohttp.ClientSession | None = None  # on our own API socket, for requests to us

    async def forward(self, method: str, path: str, headers: dict[str, str],
                      body: bytes) -> AsyncIterator[pb.ForwardChunk]:
        """This request, answered by the leader (raises NotLeader/Unavailable when there is none)."""
        lead = self.leader_addr()
        if not lead:
            raise ShoalError(f"rpc error: code = Unknown desc = {self.no_leader}")
        req = pb.ForwardRequest(method=method, path=path, body=body)
        for k, v in headers.items():
            if k.lower() not in _HOP_HEADERS:
                req.headers[k] = v
        req.headers[FORWARDED_HEADER] = self.node_id
        if self._channels is None:
            self._channels = LeaderChannels(self.secure, self.credentials)
        if method not in ("GET", "HEAD"):
            # A write's answer is whole and small: it shares the leader's stream with the other writes.
            if self._mux is None:
                self._mux = ForwardMux(self._channels)
            try:
                yield await self._mux.request(lead, req)
                return
            except MuxUnsupported:
                pass  # an older leader: a call of its own
        async for chunk in raft_forward(self._channels, lead, req):
            yield chunk

    async def serve(self, req: pb.ForwardRequest) -> AsyncIterator[pb.ForwardChunk]:
        """On the leader: run a forwarded request on this node's own Engine API (a write in process)."""
        if not self.leading():
            raise self.not_leader()
        local = self.local_api() if req.method not in ("GET", "HEAD") else None
        if local is not None:
            status, headers, body = await local.run(req.method, req.path, dict(req.headers), req.body,
                                                    req.headers.get(FORWARDED_HEADER, "a manager"))
            head = pb.ForwardChunk(status=status, data=body)
            for k, v in headers.items():
                if k.lower() not in _HOP_HEADERS:
                    head.headers[k] = v
            head.headers["Content-Length"] = str(len(body))
            yield head
            return
        if self.api_socket is None:
            raise ShoalError("this manager serves no Engine API socket to run forwarded requests on")
        if self._api_session is None or self._api_session.closed:
            # One session (keep-alive connections to our own socket) for every forwarded request.
            self._api_session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.api_socket), limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        async with self._api_session.request(req.method, "http://shoal" + req.path, headers=dict(req.headers),
                                             data=req.body or None) as resp:
            head = pb.ForwardChunk(status=resp.status)
            for k, v in resp.headers.items():
                if k.lower() not in _HOP_HEADERS:
                    head.headers[k] = v
            if resp.content_length is not None:
                # The length goes with the head, so the forwarding manager can tell a whole answer from one cut
                # short; a small body (every write's answer) goes in the same message.
                head.headers["Content-Length"] = str(resp.content_length)
                if resp.content_length <= _FORWARD_CHUNK:
                    head.data = await resp.read()
                    yield head
                    return
            yield head
            async for data in resp.content.iter_any():
                yield pb.ForwardChunk(data=data)

    async def close(self) -> None:
        mux, self._mux = self._mux, None
        if mux is not None:
            await mux.close()
        channels, self._channels = self._channels, None
        if channels is not None:
            await channels.close()
        session, self._api_session = self._api_session, None
        if session is not None:
            await session.close()


