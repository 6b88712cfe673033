"""The embedded DNS server over a store-fed directory, with a fake upstream server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from shoal.model.objects import (
    Service,
    Task,
)
from shoal.model.state import TaskState
from shoal.net.directory import StoreDirectory
from shoal.net.dns import DNSServer, parse_upstream
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.clock import VirtualClock
from shoal.testing.sim import memory_store
from tests.support import netobjects
from tests.support.netobjects import update_task

NET, OTHER = "net1", "net2"


def service(sid: str, name: str, *, mode: str = "vip", vip: str = "", aliases: tuple[str, ...] = (),
            net: str = NET) -> Service:
    return netobjects.service(sid, name, net=net, vip=vip, mode=mode, aliases=aliases)


def task(tid: str, svc: Service, slot: int, addr: str, *, state: TaskState = TaskState.RUNNING,
         healthy: bool | None = None, net: str = NET) -> Task:
    return netobjects.task(tid, net=net, addr=addr, svc=svc, slot=slot, state=state, healthy=healthy)


async def populated() -> MemoryStore:
    store = memory_store(VirtualClock())
    web = service("s-web", "web", vip="10.0.1.2/24", aliases=("frontend",))
    db = service("s-db", "db", mode="dnsrr")
    hidden = service("s-hid", "hidden", vip="10.0.2.2/24", net=OTHER)

    def fn(tx: Tx) -> None:
        tx.create(netobjects.network(NET, "10.0.1.0/24"))
        tx.create(netobjects.network(OTHER, "10.0.2.0/24"))
        for s in (web, db, hidden):
            tx.create(s)
        tx.create(task("t-web1", web, 1, "10.0.1.3/24"))
        tx.create(task("t-web2", web, 2, "10.0.1.4/24"))
        tx.create(task("t-web3", web, 3, "10.0.1.5/24", healthy=False))  # unhealthy: not served
        tx.create(task("t-web4", web, 4, "10.0.1.6/24", state=TaskState.STARTING))
        tx.create(task("t-db1", db, 1, "10.0.1.10/24"))
        tx.create(task("t-db2", db, 2, "10.0.1.11/24"))
        tx.create(task("t-hid1", hidden, 1, "10.0.2.3/24", net=OTHER))

    await store.update(fn)
    return store


class FakeUpstream:
    """An upstream DNS server on loopback answering `*.example.test` with 192.0.2.7 (UDP and TCP)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def answer(self, data: bytes) -> bytes:
        req = DNSRecord.parse(data)
        self.queries.append(str(req.q.qname))
        reply = req.reply()
        if str(req.q.qname).endswith("example.test."):
            reply.add_answer(RR(req.q.qname, QTYPE.A, rdata=A("192.0.2.7"), ttl=30))
        else:
            reply.header.rcode = 3  # NXDOMAIN
        out: bytes = reply.pack()
        return out

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        up = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.t.sendto(up.answer(data), addr)  # type: ignore[attr-defined]

        async def tcp(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            n = struct.unpack("!H", await r.readexactly(2))[0]
            out = self.answer(await r.readexactly(n))
            w.write(struct.pack("!H", len(out)) + out)
            await w.drain()
            w.close()

        self.server = await asyncio.start_server(tcp, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.udp, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", port))
        return "127.0.0.1", port

    async def close(self) -> None:
        self.udp.close()
        self.server.close()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def dns_rig(upstreams: list[str] | None = None) -> AsyncIterator[tuple[MemoryStore, StoreDirectory,
                                                                                  DNSServer, FakeUpstream]]:
    store = await populated()
    up = FakeUpstream()
    host, port = await up.start()
    directory = StoreDirectory(store)
    directory.start()
    server = DNSServer(directory, [NET], upstreams=[f"{host}:{port}"] if upstreams is None else upstreams)
    await server.start()
    try:
        yield store, directory, server, up
    finally:
        await server.close()
        await directory.close()
        await up.close()


async def ask(server: DNSServer, name: str, rdtype: str = "A", *, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    host, port = server.address
    if tcp:
        return await dns.asyncquery.tcp(q, host, port=port, timeout=5)
    return await dns.asyncquery.udp(q, host, port=port, timeout=5)


def ips(resp: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in resp.answer for r in rrset)


async def test_service_names_tasks_and_aliases() -> None:
    async with dns_rig() as (_store, _d, server, up):
        assert ips(await ask(server, "web")) == ["10.0.1.2"]  # the VIP
        assert ips(await ask(server, "WEB.")) == ["10.0.1.2"]
        assert ips(await ask(server, "frontend")) == ["10.0.1.2"]  # a network alias
        assert ips(await ask(server, "tasks.web")) == ["10.0.1.3", "10.0.1.4"]  # running and not unhealthy
        assert ips(await ask(server, "tasks.frontend")) == ["10.0.1.3", "10.0.1.4"]
        assert ips(await ask(server, "db")) == ["10.0.1.10", "10.0.1.11"]  # dnsrr: the task IPs
        assert ips(await ask(server, "tasks.db")) == ["10.0.1.10", "10.0.1.11"]
        assert ips(await ask(server, "web.1.t-web1")) == ["10.0.1.3"]  # a task name
        assert ips(await ask(server, "web.3.t-web3")) == []
        resp = await ask(server, "web", "AAAA")  # ours, but no IPv6: empty NOERROR, not forwarded
        assert resp.rcode() == dns.rcode.NOERROR and not resp.answer
        ptr = await ask(server, "3.1.0.10.in-addr.arpa", "PTR")
        assert [r.to_text() for rrset in ptr.answer for r in rrset] == ["web.1.t-web1."]
        assert ips(await ask(server, "web", tcp=True)) == ["10.0.1.2"]
        assert up.queries == ["web.3.t-web3."]  # an unhealthy task's name is not ours


async def test_names_of_other_networks_are_not_ours() -> None:
    async with dns_rig() as (_store, _d, server, up):
        resp = await ask(server, "hidden")
        assert resp.rcode() == dns.rcode.NXDOMAIN  # forwarded, and the upstream does not know it
        assert up.queries == ["hidden."]


async def test_answers_change_as_soon_as_tasks_change() -> None:
    async with dns_rig() as (store, directory, server, _up):
        assert ips(await ask(server, "tasks.web")) == ["10.0.1.3", "10.0.1.4"]

        await store.update(lambda tx: update_task(tx, "t-web1", state=TaskState.COMPLETE))
        await directory.synced(store.version)
        assert ips(await ask(server, "tasks.web")) == ["10.0.1.4"]
        assert ips(await ask(server, "web.1.t-web1")) == []

        def desired_shutdown(tx: Tx) -> None:  # told to stop: leaves the answers before it stops
            update_task(tx, "t-web2", desired=TaskState.SHUTDOWN)
            update_task(tx, "t-web4", state=TaskState.RUNNING)

        await store.update(desired_shutdown)
        await directory.synced(store.version)
        assert ips(await ask(server, "tasks.web")) == ["10.0.1.6"]

        await store.update(lambda tx: tx.delete("service", "s-db"))
        await directory.synced(store.version)
        assert (await ask(server, "db")).rcode() == dns.rcode.NXDOMAIN  # forwarded now, unknown upstream


async def test_names_of_ours_wait_for_the_hold_of_whoever_asks() -> None:
    """The docker executor's gateway DNS answers a container once its VIP rules are in (shoal.net.engine
    `_rules_ready`): names of ours wait for `hold(client)`; forwarded ones, and other queries, do not."""
    store = await populated()
    up = FakeUpstream()
    host, port = await up.start()
    directory = StoreDirectory(store)
    directory.start()
    ready, both = asyncio.Event(), asyncio.Event()
    asked: list[str] = []

    async def hold(client: str) -> None:
        asked.append(client)
        if len(asked) == 2:
            both.set()
        await ready.wait()

    server = DNSServer(directory, [NET], upstreams=[f"{host}:{port}"], hold=hold)
    await server.start()
    try:
        held = [asyncio.create_task(ask(server, "web")), asyncio.create_task(ask(server, "tasks.web", tcp=True))]
        assert ips(await ask(server, "www.example.test")) == ["192.0.2.7"]  # answered meanwhile
        await asyncio.wait_for(both.wait(), 5)
        assert asked == ["127.0.0.1", "127.0.0.1"] and not any(t.done() for t in held)
        ready.set()
        assert [ips(await t) for t in held] == [["10.0.1.2"], ["10.0.1.3", "10.0.1.4"]]
    finally:
        await server.close()
        await directory.close()
        await up.close()


async def test_other_names_are_forwarded_over_udp_and_tcp() -> None:
    async with dns_rig() as (_store, _d, server, up):
        assert ips(await ask(server, "www.example.test")) == ["192.0.2.7"]
        assert ips(await ask(server, "api.example.test", tcp=True)) == ["192.0.2.7"]
        assert up.queries == ["www.example.test.", "api.example.test."]


async def test_a_dead_upstream_is_skipped_and_none_left_is_servfail() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port nobody answers on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
        up = FakeUpstream()
        host, port = await up.start()
        store = await populated()
        directory = StoreDirectory(store)
        directory.start()
        server = DNSServer(directory, [NET], upstreams=[dead, f"{host}:{port}"], upstream_timeout=0.3)
        await server.start()
        lonely = DNSServer(directory, [NET], upstreams=[dead], upstream_timeout=0.3)
        await lonely.start()
        try:
            assert ips(await ask(server, "x.example.test")) == ["192.0.2.7"]
            assert (await ask(lonely, "x.example.test")).rcode() == dns.rcode.SERVFAIL
            assert ips(await ask(lonely, "web")) == ["10.0.1.2"]  # ours still answer
        finally:
            await server.close()
            await lonely.close()
            await directory.close()
            await up.close()


async def test_large_udp_answers_are_truncated_and_complete_over_tcp() -> None:
    async with dns_rig() as (store, directory, server, _up):
        big = service("s-big", "big", mode="dnsrr")

        def fn(tx: Tx) -> None:
            tx.create(big)
            for i in range(60):
                tx.create(task(f"t-big{i}", big, i + 1, f"10.0.1.{100 + i}/24"))

        await store.update(fn)
        await directory.synced(store.version)
        q = dns.message.make_query("tasks.big", "A")
        q.flags &= ~dns.flags.RD
        raw = await dns.asyncquery.udp(q, server.address[0], port=server.address[1], timeout=5,
                                       ignore_trailing=True, raise_on_truncation=False)
        assert raw.flags & dns.flags.TC
        assert len(ips(await ask(server, "tasks.big", tcp=True))) == 60


def test_parse_upstream() -> None:
    assert parse_upstream("1.1.1.1") == ("1.1.1.1", 53)
    assert parse_upstream("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_upstream("[::1]:53") == ("::1", 53)


class _OverTheWire:
    """The worker's feed: every snapshot encoded and decoded as the Network.WatchState stream carries it."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def states(self) -> AsyncIterator[Any]:
        from shoal.net.state import StoreChanges, decode_state, encode_state

        async for s in StoreChanges(self.store).states():
            yield decode_state(json.loads(json.dumps(encode_state(s))))


@pytest.mark.parametrize("feed", ["manager", "worker"])
async def test_a_node_agents_dns_answers_right_after_each_commit(tmp_path: Path, feed: str) -> None:
    """The production path (store -> snapshot feed -> the node agent's directory -> DNS server): once the agent
    has applied the commit that tells a task to stop, the very next answer leaves it out, with no retry."""
    from shoal.net.agent import NetworkAgent
    from shoal.net.state import LocalFeed

    store = await populated()
    agent = NetworkAgent("n1", "127.0.0.1", tmp_path, LocalFeed(store) if feed == "manager" else _OverTheWire(store))
    await agent.start()
    server = DNSServer(agent.directory, [NET])
    await server.start()
    try:
        await agent.synced(store.version)
        assert ips(await ask(server, "tasks.web")) == ["10.0.1.3", "10.0.1.4"]
        assert ips(await ask(server, "web")) == ["10.0.1.2"]

        # Still RUNNING: it is only told to go.
        await store.update(lambda tx: update_task(tx, "t-web2", desired=TaskState.REMOVE))
        await agent.synced(store.version)
        assert ips(await ask(server, "tasks.web")) == ["10.0.1.3"]
        assert ips(await ask(server, "web.2.t-web2")) == []
        assert [e.ip for e in agent.directory.endpoints("s-web", NET)] == ["10.0.1.3"]  # the VIP's backends too

        await store.update(lambda tx: update_task(tx, "t-web1", state=TaskState.FAILED))
        await agent.synced(store.version)
        assert ips(await ask(server, "tasks.web")) == []
        assert agent.directory.endpoints("s-web", NET) == []
    finally:
        await server.close()
        await agent.close()
