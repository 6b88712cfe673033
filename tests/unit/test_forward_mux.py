"""Writes a follower forwards share one stream to the leader (shoal/rpc/forwardmux.py), over real gRPC with
mutual TLS: many concurrent requests each get their own answer in far fewer messages than requests, a
request's error reaches only that request (a NotLeader with its hint included), a leader lost mid-stream fails
the requests waiting on it and the next request opens a new stream, and a leader without `ForwardMux` is
detected so that the caller falls back to a call per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from shoal import ca as CA
from shoal.errors import NotLeader, ShoalError, Unavailable
from shoal.model.objects import CAConfig
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg
from shoal.rpc.forwardmux import ForwardMux, MuxUnsupported
from shoal.rpc.raft import LeaderChannels, RaftHooks, RaftServicer, SecureAddrs
from shoal.rpc.server import SECURE_SERVER_OPTIONS

CLUSTER = "cluster1"
LEADER = "leader:2377"


def creds(root: CA.RootCA, node_id: str) -> tuple[str, str, str]:
    key = CA.new_key_pem()
    cert = CA.sign_node_cert(root, CAConfig(), CA.make_csr(key), node_id, "manager", CLUSTER, time.time(), 3600.0)
    return key, cert, root.ca_cert_pem


class Leader:
    """The leader's side: `serve` stands in for running a request on its Engine API."""

    def __init__(self, expect: int = 0) -> None:
        self.calls = 0
        self.expect = expect
        self.all_in = asyncio.Event()  # set once `expect` requests have reached the leader
        self.release = asyncio.Event()
        self.release.set()

    async def serve(self, req: pb.ForwardRequest) -> AsyncIterator[pb.ForwardChunk]:
        self.calls += 1
        if self.calls >= self.expect:
            self.all_in.set()
        if req.path == "/not-leader":
            raise NotLeader("this manager is no longer the leader", "10.0.0.9:2377")
        if req.path == "/unavailable":
            raise Unavailable("rpc error: code = Unavailable desc = no quorum")
        await self.release.wait()
        yield pb.ForwardChunk(status=201, headers={"Content-Type": "application/json"}, data=b'{"ID":"')
        yield pb.ForwardChunk(data=req.body + b'"}')


async def start_server(root: CA.RootCA, forward: Callable[[pb.ForwardRequest], AsyncIterator[pb.ForwardChunk]]
                       | None, make: Callable[[RaftHooks], Any] = RaftServicer) -> tuple[grpc.aio.Server, str]:
    hooks = RaftHooks(transport=None, cluster_id=lambda: CLUSTER,  # type: ignore[arg-type]
                      is_member_allowed=lambda _n: True, join=lambda *_a: None, forward=forward)
    server = grpc.aio.server(options=SECURE_SERVER_OPTIONS)
    pbg.add_RaftServicer_to_server(make(hooks), server)
    key, cert, roots = creds(root, "leader")
    sc = grpc.ssl_server_credentials([(key.encode(), cert.encode())], root_certificates=roots.encode(),
                                     require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", sc)
    await server.start()
    return server, f"127.0.0.1:{port}"


def follower(root: CA.RootCA, secure_addr: str) -> ForwardMux:
    mine = creds(root, "follower")
    secure = SecureAddrs(lambda: mine)
    secure._cache[LEADER] = secure_addr  # no CA listener here: where the leader's secure listener is, told directly
    return ForwardMux(LeaderChannels(secure, lambda: mine))


def request(path: str, body: bytes = b"") -> pb.ForwardRequest:
    return pb.ForwardRequest(method="POST", path=path, body=body)


@pytest.fixture
def root() -> CA.RootCA:
    return CA.create_root_ca(time.time())


class CountingServicer(RaftServicer):
    """The real servicer, counting the messages of each direction of `ForwardMux`."""

    def __init__(self, hooks: RaftHooks) -> None:
        super().__init__(hooks)
        self.requests_in = 0
        self.answers_out = 0

    async def ForwardMux(self, request_iterator: AsyncIterator[pb.ForwardMuxBatch],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ForwardMuxBatch]:
        async def counted() -> AsyncIterator[pb.ForwardMuxBatch]:
            async for b in request_iterator:
                self.requests_in += 1
                yield b

        async for out in super().ForwardMux(counted(), context):
            self.answers_out += 1
            yield out


async def test_concurrent_writes_each_get_their_own_answer_in_few_messages(root: CA.RootCA) -> None:
    n = 200
    leader = Leader(expect=n)
    leader.release.clear()  # every request reaches the leader before any is answered
    made: list[CountingServicer] = []

    def make(hooks: RaftHooks) -> CountingServicer:
        made.append(CountingServicer(hooks))
        return made[-1]

    server, addr = await start_server(root, leader.serve, make)
    (counting,) = made
    mux = follower(root, addr)
    try:
        calls = [asyncio.ensure_future(mux.request(LEADER, request("/configs/create", f"id{i}".encode())))
                 for i in range(n)]
        await asyncio.wait_for(leader.all_in.wait(), 30)
        leader.release.set()
        answers = await asyncio.wait_for(asyncio.gather(*calls), 30)
    finally:
        await mux.close()
        await server.stop(None)
    for i, a in enumerate(answers):
        assert a.status == 201 and a.data == b'{"ID":"id%d"}' % i
        assert a.headers["Content-Length"] == str(len(a.data)) and a.headers["Content-Type"] == "application/json"
    # One stream, and the requests queued while a message was written went out together (likewise the answers).
    assert 1 <= counting.requests_in <= 10 and 1 <= counting.answers_out <= 20, \
        (counting.requests_in, counting.answers_out)


async def test_an_error_reaches_only_its_own_request(root: CA.RootCA) -> None:
    leader = Leader()
    server, addr = await start_server(root, leader.serve)
    mux = follower(root, addr)
    try:
        ok, not_leader, unavailable = await asyncio.gather(
            mux.request(LEADER, request("/configs/create", b"a")), mux.request(LEADER, request("/not-leader")),
            mux.request(LEADER, request("/unavailable")), return_exceptions=True)
        again = await mux.request(LEADER, request("/configs/create", b"b"))  # the stream is still good
    finally:
        await mux.close()
        await server.stop(None)
    assert isinstance(ok, pb.ForwardChunk) and ok.data == b'{"ID":"a"}'
    assert isinstance(not_leader, NotLeader) and not_leader.leader_addr == "10.0.0.9:2377"
    assert isinstance(unavailable, Unavailable) and "no quorum" in str(unavailable)
    assert again.data == b'{"ID":"b"}'


async def test_a_leader_lost_mid_stream_fails_its_requests_and_the_next_opens_a_new_stream(
        root: CA.RootCA) -> None:
    leader = Leader(expect=1)
    leader.release.clear()
    server, addr = await start_server(root, leader.serve)
    mux = follower(root, addr)
    try:
        waiting = asyncio.ensure_future(mux.request(LEADER, request("/configs/create", b"x")))
        await asyncio.wait_for(leader.all_in.wait(), 10)
        await server.stop(None)  # the leader goes away with the request unanswered
        with pytest.raises(ShoalError) as err:
            await asyncio.wait_for(waiting, 10)
        assert not isinstance(err.value, MuxUnsupported)
        # A new leader at the same address: the next request is answered on a new stream.
        leader2 = Leader()
        server2, addr2 = await start_server(root, leader2.serve)
        mux.channels.secure._cache[LEADER] = addr2
        answer = await asyncio.wait_for(mux.request(LEADER, request("/configs/create", b"y")), 10)
        assert answer.data == b'{"ID":"y"}' and leader2.calls == 1
        await server2.stop(None)
    finally:
        await mux.close()


class OldRaftServicer(pbg.RaftServicer):
    """A leader of a version without ForwardMux: the generated base class answers UNIMPLEMENTED."""


async def test_a_leader_without_forward_mux_is_detected_once(root: CA.RootCA) -> None:
    server, addr = await start_server(root, None, lambda _h: OldRaftServicer())
    mux = follower(root, addr)
    try:
        with pytest.raises(MuxUnsupported):
            await asyncio.wait_for(mux.request(LEADER, request("/configs/create", b"x")), 10)
        assert LEADER in mux.unsupported
        with pytest.raises(MuxUnsupported):  # at once, without trying the stream again
            await mux.request(LEADER, request("/configs/create", b"y"))
    finally:
        await mux.close()
        await server.stop(None)
