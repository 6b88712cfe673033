"""A follower relaying a request to the leader answers the leader's whole answer or an error, never a status
with a cut body: a leader lost between its status line and its body once gave the client 201 and no ID.

The relay (`forward_to_leader`) runs in a real aiohttp server on a socket; the leader's side is a stream of
`ForwardChunk`s that ends the way a dead leader's gRPC stream ends (an Unavailable error).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from shoal.api import messages as M
from shoal.engineapi.server import NODE_KEY, errors_middleware, forward_to_leader
from shoal.errors import Unavailable
from shoal.rpc import shoal_pb2 as pb

BODY = b'{"ID":"6wg8plz1k96psrurf0idw6fs8","Warnings":null}\n'


class LeaderStream:
    """What `Forwarder.forward` yields: these chunks, then (if `dies`) the error of a lost leader."""

    def __init__(self, chunks: list[pb.ForwardChunk], dies: bool) -> None:
        self.chunks = chunks
        self.dies = dies

    async def forward(self, method: str, path: str, headers: dict[str, str],
                      body: bytes) -> AsyncIterator[pb.ForwardChunk]:
        for c in self.chunks:
            yield c
        if self.dies:
            raise Unavailable("rpc error: code = Unavailable desc = error reading from server: EOF")


class Node:
    def __init__(self, forwarder: LeaderStream) -> None:
        self.forwarder = forwarder

    async def wait_for_leader(self) -> None:
        return None


async def relay(replica: LeaderStream) -> tuple[int, bytes]:
    app = web.Application(middlewares=[errors_middleware])
    app[NODE_KEY] = Node(replica)  # type: ignore[assignment]
    app.router.add_post("/services/create", forward_to_leader)
    async with TestServer(app) as server, aiohttp.ClientSession() as client, \
            client.post(server.make_url("/services/create"), data=b"{}") as resp:
        return resp.status, await resp.read()


def head(status: int, length: int, data: bytes = b"") -> pb.ForwardChunk:
    return pb.ForwardChunk(status=status, headers={"Content-Type": "application/json",
                                                   "Content-Length": str(length)}, data=data)


async def test_leader_lost_after_its_status_line_is_an_error_not_an_empty_201() -> None:
    status, body = await relay(LeaderStream([head(201, len(BODY))], dies=True))
    assert status == 503
    assert body == b'{"message":"%s"}\n' % M.LEADER_LOST_MID_ANSWER.encode()


async def test_leader_lost_mid_body_is_an_error_not_a_cut_body() -> None:
    status, body = await relay(LeaderStream([head(201, len(BODY)), pb.ForwardChunk(data=BODY[:10])], dies=True))
    assert status == 503 and b"transport is closing" in body


async def test_a_whole_answer_is_relayed_in_one_message_or_several() -> None:
    assert await relay(LeaderStream([head(201, len(BODY), BODY)], dies=False)) == (201, BODY)
    parts: list[Any] = [head(201, len(BODY)), pb.ForwardChunk(data=BODY[:7]), pb.ForwardChunk(data=BODY[7:])]
    assert await relay(LeaderStream(parts, dies=False)) == (201, BODY)
    # Whole and then the stream fails (the leader died after sending it all): the answer stands.
    assert await relay(LeaderStream([head(201, len(BODY), BODY)], dies=True)) == (201, BODY)


async def test_a_streamed_answer_without_a_length_is_still_streamed() -> None:
    chunks = [pb.ForwardChunk(status=200, headers={"Content-Type": "application/vnd.docker.raw-stream"},
                              data=b"a"), pb.ForwardChunk(data=b"b")]
    assert await relay(LeaderStream(chunks, dies=False)) == (200, b"ab")


async def test_a_head_request_relays_its_length_without_a_body() -> None:
    app = web.Application(middlewares=[errors_middleware])
    app[NODE_KEY] = Node(LeaderStream([head(200, 120)], dies=False))  # type: ignore[assignment]
    app.router.add_route("HEAD", "/services/x", forward_to_leader)
    async with TestServer(app) as server, aiohttp.ClientSession() as client, \
            client.head(server.make_url("/services/x")) as resp:
        assert resp.status == 200 and await resp.read() == b""
