"""The user-space load balancer on loopback: spread, dynamic backends, half-close, PROXY v2, UDP, local only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator
from typing import cast

import pytest

from shoal.net.lb import (
    Backend,
    KeepAlive,
    ProxyHeader,
    TCPBalancer,
    UDPBalancer,
    parse_proxy_v2,
    proxy_v2_header,
)


class TCPBackend:
    """Reads everything the client sends until EOF, then answers `<name>:<data>` and closes. With
    `proxy`, it first reads the PROXY v2 header and records it."""

    def __init__(self, name: str, *, proxy: bool = False) -> None:
        self.name = name
        self.proxy = proxy
        self.headers: list[ProxyHeader] = []
        self.received: list[bytes] = []

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()  # until the client's (relayed) half-close
        if self.proxy:
            hdr, used = parse_proxy_v2(data)
            assert hdr is not None, "no PROXY header"
            self.headers.append(hdr)
            data = data[used:]
        self.received.append(data)
        w.write(self.name.encode() + b":" + data)
        await w.drain()
        w.close()

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return Backend("127.0.0.1", self.server.sockets[0].getsockname()[1], node_id=self.name)

    async def close(self) -> None:
        self.server.close()


@contextlib.asynccontextmanager
async def backends(n: int, *, proxy: bool = False) -> AsyncIterator[tuple[list[TCPBackend], list[Backend]]]:
    bes = [TCPBackend(f"b{i}", proxy=proxy) for i in range(n)]
    addrs = [await b.start() for b in bes]
    try:
        yield bes, addrs
    finally:
        for b in bes:
            await b.close()


async def request(addr: tuple[str, int], payload: bytes = b"ping") -> tuple[bytes, tuple[str, int]]:
    """Send, half-close, read the whole answer; also return the client's own address."""
    r, w = await asyncio.open_connection(*addr)
    me = w.get_extra_info("sockname")
    w.write(payload)
    w.write_eof()
    data = await r.read()
    w.close()
    return data, (me[0], me[1])


def who(answer: bytes) -> str:
    return answer.split(b":", 1)[0].decode()


async def test_connections_spread_over_backends_and_follow_the_backend_set() -> None:
    async with backends(3) as (_bes, addrs):
        current = list(addrs)
        lb = TCPBalancer(lambda: current)
        await lb.start()
        try:
            seen = Counter([who((await request(lb.address))[0]) for _ in range(9)])
            assert seen == Counter({"b0": 3, "b1": 3, "b2": 3})
            # An established connection to b1 outlives b1's removal from the set.
            r, w = await asyncio.open_connection(*lb.address)
            first = who((await request(lb.address))[0])  # advances the rotation past r/w's backend
            current.remove(addrs[1])
            seen = Counter([who((await request(lb.address))[0]) for _ in range(6)])
            assert seen == Counter({"b0": 3, "b2": 3})
            w.write(b"late")
            w.write_eof()
            assert who(await r.read()) in {"b0", "b1", "b2"} - {first}
            w.close()
        finally:
            await lb.close()


async def test_a_dead_backend_is_skipped() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        dead = Backend("127.0.0.1", s.getsockname()[1])
        async with backends(1) as (_bes, addrs):
            lb = TCPBalancer(lambda: [dead, addrs[0]])
            await lb.start()
            try:
                assert [who((await request(lb.address))[0]) for _ in range(3)] == ["b0"] * 3
            finally:
                await lb.close()


async def test_payload_and_half_close_both_ways() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB through the splice
    async with backends(1) as (bes, addrs):
        lb = TCPBalancer(lambda: addrs)
        await lb.start()
        try:
            answer, _me = await request(lb.address, big)
            assert answer == b"b0:" + big  # the backend only answers after seeing the client's EOF

            # The other direction: a backend that speaks first and half-closes, then still reads.
            got: asyncio.Queue[bytes] = asyncio.Queue()

            async def greeter(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(b"hello")
                w.write_eof()
                await got.put(await r.read())
                w.close()

            srv = await asyncio.start_server(greeter, "127.0.0.1", 0)
            lb2 = TCPBalancer(lambda: [Backend("127.0.0.1", srv.sockets[0].getsockname()[1])])
            await lb2.start()
            r, w = await asyncio.open_connection(*lb2.address)
            assert await r.read() == b"hello"  # EOF relayed to the client ...
            w.write(b"still here")  # ... whose write half still works
            w.write_eof()
            assert await asyncio.wait_for(got.get(), 5) == b"still here"
            w.close()
            await lb2.close()
            srv.close()
        finally:
            await lb.close()
        assert bes[0].received == [big]


async def test_proxy_protocol_v2_carries_the_client_address() -> None:
    async with backends(2, proxy=True) as (bes, addrs):
        lb = TCPBalancer(lambda: addrs, proxy_protocol=True)
        await lb.start()
        try:
            answer, me = await request(lb.address, b"data")
            assert answer.endswith(b":data")  # the header was consumed, not passed on as data
            (hdr,) = [h for b in bes for h in b.headers]
            assert hdr.source == me
            assert hdr.destination == lb.address
            assert hdr.stream
        finally:
            await lb.close()


async def test_keepalive_on_both_sockets() -> None:
    async def greeter(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"ready")
        await w.drain()
        await r.read()
        w.close()

    srv = await asyncio.start_server(greeter, "127.0.0.1", 0)
    lb = TCPBalancer(lambda: [Backend("127.0.0.1", srv.sockets[0].getsockname()[1])],
                     keepalive=KeepAlive(idle=42, interval=7, count=3))
    await lb.start()
    try:
        r, w = await asyncio.open_connection(*lb.address)
        assert await r.readexactly(5) == b"ready"  # relayed: both sides are connected and registered
        (conn,) = lb.connections
        for sock in (conn.client_sock, conn.backend_sock):
            assert sock is not None
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 42
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        w.write_eof()
        assert await r.read() == b""
        w.close()
    finally:
        await lb.close()
        srv.close()


async def test_local_only_keeps_to_this_nodes_backends() -> None:
    async with backends(3) as (_bes, addrs):
        lb = TCPBalancer(lambda: addrs, local_only=True, local_node="b2")
        await lb.start()
        none_local = TCPBalancer(lambda: addrs, local_only=True, local_node="elsewhere")
        await none_local.start()
        try:
            assert {who((await request(lb.address))[0]) for _ in range(4)} == {"b2"}
            with contextlib.suppress(ConnectionResetError):  # closed (or reset): no local task
                assert (await request(none_local.address))[0] == b""
        finally:
            await lb.close()
            await none_local.close()


class UDPBackend(asyncio.DatagramProtocol):
    def __init__(self, name: str, proxy: bool = False) -> None:
        self.name = name
        self.proxy = proxy
        self.headers: list[ProxyHeader] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.proxy:
            hdr, used = parse_proxy_v2(data)
            assert hdr is not None
            self.headers.append(hdr)
            data = data[used:]
        self.t.sendto(self.name.encode() + b":" + data, addr)


class UDPClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.q.put_nowait(data)


async def udp_client(addr: tuple[str, int]) -> tuple[asyncio.DatagramTransport, UDPClient]:
    t, p = await asyncio.get_running_loop().create_datagram_endpoint(UDPClient, remote_addr=addr)
    return t, p


@pytest.mark.parametrize("proxy", [False, True])
async def test_udp_sessions_spread_stick_and_expire(proxy: bool) -> None:
    loop = asyncio.get_running_loop()
    protos = [UDPBackend(f"u{i}", proxy) for i in range(3)]
    ends = [await loop.create_datagram_endpoint(lambda p=p: p, local_addr=("127.0.0.1", 0)) for p in protos]
    addrs = [Backend("127.0.0.1", t.get_extra_info("sockname")[1]) for t, _ in ends]
    ended: asyncio.Queue[tuple[tuple[str, int], Backend]] = asyncio.Queue()
    lb = UDPBalancer(lambda: addrs, proxy_protocol=proxy, idle_timeout=0.2,
                     on_session_end=lambda c, b: ended.put_nowait((c, b)))
    await lb.start()
    clients = [await udp_client(lb.address) for _ in range(3)]
    try:
        names = []
        for t, p in clients:
            t.sendto(b"a")
            names.append(who(await asyncio.wait_for(p.q.get(), 5)))
        assert sorted(names) == ["u0", "u1", "u2"]  # one flow per client, spread
        for (t, p), name in zip(clients, names, strict=True):
            t.sendto(b"b")
            assert await asyncio.wait_for(p.q.get(), 5) == name.encode() + b":b"  # the flow sticks
        if proxy:
            mine = {t.get_extra_info("sockname")[:2] for t, _ in clients}
            srcs = {h.source for p in protos for h in p.headers}
            assert srcs == mine
            assert all(not h.stream and h.destination == lb.address for p in protos for h in p.headers)
        assert len(lb.sessions) == 3
        gone = {(await asyncio.wait_for(ended.get(), 5))[0] for _ in range(3)}  # idle sessions end
        assert gone == {t.get_extra_info("sockname")[:2] for t, _ in clients}
        assert lb.sessions == {}
        t, p = clients[0]
        t.sendto(b"c")  # a new session after expiry
        assert (await asyncio.wait_for(p.q.get(), 5)).endswith(b":c")
    finally:
        for t, _ in clients:
            t.close()
        await lb.close()
        for t, _ in ends:
            t.close()


def test_proxy_v2_header_round_trip() -> None:
    h = proxy_v2_header(("192.0.2.1", 40000), ("10.0.0.5", 80))
    assert parse_proxy_v2(h + b"rest") == (ProxyHeader(("192.0.2.1", 40000), ("10.0.0.5", 80), True), len(h))
    h6 = proxy_v2_header(("2001:db8::1", 5), ("2001:db8::2", 6), stream=False)
    assert parse_proxy_v2(h6)[0] == ProxyHeader(("2001:db8::1", 5), ("2001:db8::2", 6), False)
    assert parse_proxy_v2(b"GET / HTTP/1.1\r\n") == (None, 0)
    with pytest.raises(ValueError):
        parse_proxy_v2(h[:20])


def test_service_backends_follow_the_directory() -> None:
    from shoal.net.directory import Endpoint
    from shoal.net.lb import service_backends

    class Dir:
        eps = [Endpoint("t1", "n1", "10.0.0.3"), Endpoint("t2", "n2", "10.0.0.4")]

        def endpoints(self, service_id: str, network_id: str, *, local_only: bool = False) -> list[Endpoint]:
            assert (service_id, network_id) == ("s", "net")
            return list(self.eps)

    d = Dir()
    src = service_backends(d, "s", "net", 8080)
    assert list(src()) == [Backend("10.0.0.3", 8080, "n1"), Backend("10.0.0.4", 8080, "n2")]
    d.eps.pop()
    assert list(src()) == [Backend("10.0.0.3", 8080, "n1")]
