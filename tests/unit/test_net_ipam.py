"""IPAM through the real allocator on a store: churn without leaks, full networks, user subnets and ranges."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from shoal.ids import new_id
from shoal.manager.allocator import Allocator
from shoal.manager.controlapi import ControlAPI
from shoal.model.objects import (
    Annotations,
    Cluster,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachmentConfig,
    NetworkSpec,
    Service,
    Task,
    TaskStatus,
)
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, ReadTx
from shoal.testing.clock import VirtualClock
from shoal.testing.sim import memory_store, service_spec


async def until(store: MemoryStore, pred: Callable[[ReadTx], bool], what: str = "") -> None:
    """Wait until `pred` holds on the store, re-checking after every commit (no polling)."""
    sub = store.watch(limit=10_000_000)
    try:
        async with asyncio.timeout(10):
            while not pred(store.view()):
                await sub.get()
                sub.drain()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what or pred}") from None
    finally:
        sub.close()


class Rig:
    def __init__(self, store: MemoryStore, api: ControlAPI, alloc: Allocator) -> None:
        self.store, self.api, self.alloc = store, api, alloc
        self.rng = random.Random(7)

    async def network(self, name: str, *configs: IPAMConfig) -> Network:
        ipam = IPAMOptions(configs=configs) if configs else None
        return await self.api.create_network(NetworkSpec(annotations=Annotations(name=name), ipam=ipam))

    async def service(self, name: str, net: Network, mode: str = "vip") -> Service:
        from shoal.model.objects import EndpointSpec
        spec = service_spec(name, replicas=0)
        spec = replace(spec, task_template=replace(spec.task_template,
                                                   networks=(NetworkAttachmentConfig(target=net.id),)),
                       endpoint_spec=EndpointSpec(mode=mode))
        svc = await self.api.create_service(spec)
        if mode == "vip":
            await until(self.store, lambda v: bool(v.service(svc.id).endpoint.virtual_ips), "service VIP")
        s = self.store.view().service(svc.id)
        assert s is not None
        return s

    async def new_tasks(self, svc: Service, n: int) -> list[str]:
        ids = [new_id(self.rng) for _ in range(n)]

        def fn(tx: object) -> None:
            for tid in ids:
                tx.create(Task(id=tid, spec=svc.spec.task_template, service_id=svc.id,  # type: ignore[attr-defined]
                               service_annotations=svc.spec.annotations, slot=1))

        await self.store.update(fn)
        return ids

    async def finish(self, ids: list[str], *, delete: bool) -> None:
        def fn(tx: object) -> None:
            for tid in ids:
                t = tx.task(tid)  # type: ignore[attr-defined]
                if delete:
                    tx.delete("task", tid)  # type: ignore[attr-defined]
                else:
                    tx.update(replace(t, desired_state=TaskState.SHUTDOWN,  # type: ignore[attr-defined]
                                      status=TaskStatus(state=TaskState.COMPLETE)), check_version=False)

        await self.store.update(fn)


@contextlib.asynccontextmanager
async def rig(pool: tuple[str, ...] = ("10.0.0.0/8",), subnet_size: int = 24) -> AsyncIterator[Rig]:
    clock = VirtualClock()
    store = memory_store(clock)
    await store.update(lambda tx: tx.create(Cluster(id="c1", default_addr_pool=pool, subnet_size=subnet_size)))
    api = ControlAPI(store, clock, random.Random(1))
    alloc = Allocator(store)
    runner = asyncio.create_task(alloc.run())
    try:
        yield Rig(store, api, alloc)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def addr_of(t: Task) -> str:
    (att,) = t.networks
    (addr,) = att.addresses
    return addr


def held_addresses(v: ReadTx, net_id: str) -> list[str]:
    return [a for t in v.tasks() if t.status.state < TaskState.COMPLETE
            for att in t.networks if att.network_id == net_id for a in att.addresses]


async def test_default_pool_and_subnet_size() -> None:
    async with rig(pool=("10.128.0.0/16",), subnet_size=26) as r:
        a = await r.network("a")
        b = await r.network("b")
        assert [c.subnet for c in a.ipam.configs] == ["10.128.0.0/26"]
        assert [c.subnet for c in b.ipam.configs] == ["10.128.0.64/26"]
        assert a.vni != b.vni and a.vni > 4096
        await r.service("web", a)  # its VIP is allocated after the allocator has seen the network
        # 64 addresses - network - broadcast - gateway - the VIP
        assert r.alloc.ipam.free_count(a.id) == 60


async def test_user_subnet_gateway_and_range_are_honoured() -> None:
    async with rig() as r:
        net = await r.network("user", IPAMConfig(subnet="172.30.0.0/24", gateway="172.30.0.254",
                                                 ip_range="172.30.0.64/28"))
        assert net.ipam.configs[0].gateway == "172.30.0.254"
        svc = await r.service("web", net)
        vip = ipaddress.ip_interface(svc.endpoint.virtual_ips[0].addr)
        rng = ipaddress.ip_network("172.30.0.64/28")
        assert vip.ip in rng and vip.network == ipaddress.ip_network("172.30.0.0/24")
        ids = await r.new_tasks(svc, 15)  # 16 in the range, one is the VIP
        await until(r.store, lambda v: all(v.task(i).status.state == TaskState.PENDING for i in ids))
        v = r.store.view()
        addrs = [ipaddress.ip_interface(addr_of(v.task(i))) for i in ids]
        assert all(a.ip in rng for a in addrs)
        assert len({a.ip for a in addrs} | {vip.ip}) == 16
        assert r.alloc.ipam.free_count(net.id) == 0
        # One more does not fit in the range, although the subnet has room.
        (extra,) = await r.new_tasks(svc, 1)
        await until(r.store, lambda v: v.task(extra).status.err != "")
        assert r.store.view().task(extra).status.state == TaskState.NEW


async def test_full_network_is_a_clear_task_error_until_an_address_frees() -> None:
    async with rig() as r:
        net = await r.network("small", IPAMConfig(subnet="192.168.50.0/29"))  # 5 usable, one for the VIP
        svc = await r.service("web", net)
        ids = await r.new_tasks(svc, 5)
        await until(r.store, lambda v: sum(v.task(i).status.state == TaskState.PENDING for i in ids) == 4
                    and any(v.task(i).status.err for i in ids), "four allocated, one refused")
        v = r.store.view()
        (starved,) = [v.task(i) for i in ids if v.task(i).status.state == TaskState.NEW]
        assert starved.status.err == "no IP addresses available on network small"
        assert starved.networks == ()
        done = next(i for i in ids if i != starved.id)
        freed = addr_of(v.task(done))
        await r.finish([done], delete=False)
        await until(r.store, lambda v: v.task(starved.id).status.state == TaskState.PENDING, "starved allocated")
        assert addr_of(r.store.view().task(starved.id)) == freed


@pytest.mark.parametrize("mode", ["vip", "dnsrr"])
async def test_thousands_of_churns_leak_nothing(mode: str) -> None:
    async with rig() as r:
        net = await r.network("churn", IPAMConfig(subnet="10.77.0.0/26", ip_range="10.77.0.0/27"))
        start = 32 - 2  # the range minus the network address and the gateway (10.77.0.1)
        svc = await r.service("web", net, mode=mode)
        after_vip = start - (1 if mode == "vip" else 0)  # checked against the allocator after each batch
        live: list[str] = []
        created = 0
        while created < 3000:
            k = r.rng.randint(1, 8)
            if len(live) + k <= after_vip:
                ids = await r.new_tasks(svc, k)
                created += k
                await until(r.store, lambda v, ids=ids: all(v.task(i).status.state == TaskState.PENDING
                                                            for i in ids))
                live += ids
                v = r.store.view()
                held = held_addresses(v, net.id)
                assert len(held) == len(set(held)) == len(live), "an address handed out twice"
                assert all(ipaddress.ip_interface(a).ip in ipaddress.ip_network("10.77.0.0/27") for a in held)
                assert r.alloc.ipam.free_count(net.id) == after_vip - len(live)
            r.rng.shuffle(live)
            gone = live[: r.rng.randint(0, len(live))]
            live = live[len(gone):]
            if gone:
                await r.finish(gone, delete=r.rng.random() < 0.5)
        await r.finish(live, delete=False)
        await until(r.store, lambda v: not held_addresses(v, net.id))
        # The running allocator's bitmap is back where it started ...
        ids = await r.new_tasks(svc, after_vip)
        await until(r.store, lambda v: all(v.task(i).status.state == TaskState.PENDING for i in ids),
                    "the whole range allocatable again")
        await r.finish(ids, delete=True)
        await r.api.remove_service(svc.id)
        await until(r.store, lambda v: v.service(svc.id) is None)
        fresh = Allocator(r.store)
        fresh._rebuild()
        assert fresh.ipam.free_count(net.id) == start
        # ... and so is the running allocator's, once it has seen the removal (events are ordered: a new
        # service's VIP comes after it).
        await r.service("next", net, mode="vip")
        assert r.alloc.ipam.free_count(net.id) == start - 1


async def test_every_node_gets_one_ingress_address_returned_when_it_is_removed() -> None:
    from shoal.model.objects import Node

    async with rig() as r:
        ingress = await r.api.create_network(NetworkSpec(annotations=Annotations(name="ingress"), ingress=True,
                                                         ipam=IPAMOptions(configs=(IPAMConfig(
                                                             subnet="10.255.0.0/24"),))))
        free = 256 - 3  # network, broadcast, gateway
        await r.store.update(lambda tx: [tx.create(Node(id=f"n{i}")) for i in range(3)])

        def addrs(v: ReadTx) -> list[str]:
            return [a for n in v.nodes() for att in n.attachments if att.network_id == ingress.id
                    for a in att.addresses]

        await until(r.store, lambda v: len(addrs(v)) == 3, "three node ingress addresses")
        got = addrs(r.store.view())
        assert len(set(got)) == 3 and all(ipaddress.ip_interface(a).ip in
                                          ipaddress.ip_network("10.255.0.0/24") for a in got)
        assert r.alloc.ipam.free_count(ingress.id) == free - 3
        await r.store.update(lambda tx: tx.delete("node", "n1"))
        # The allocator handles the watch in order: once a node created after the removal has its address,
        # the removal was handled too; three nodes hold addresses, not four.
        await r.store.update(lambda tx: tx.create(Node(id="n3")))
        await until(r.store, lambda v: len(addrs(v)) == 3 and "n1" not in {n.id for n in v.nodes()}, "n3 allocated")
        assert r.alloc.ipam.free_count(ingress.id) == free - 3
        # A new allocator (a new leader) rebuilds the same picture from the store.
        fresh = Allocator(r.store)
        fresh._rebuild()
        assert fresh.ipam.free_count(ingress.id) == free - 3


async def test_a_node_created_with_the_ingress_network_gets_an_address_in_the_first_pass() -> None:
    """swarm init creates the first node and the ingress network in one commit, which the leader's allocator
    (already rebuilt from the empty store) may meet in its first full pass before it has the network's event.
    (A full ingress network: the next test.)"""
    from shoal.model.objects import Node

    store = memory_store(VirtualClock())
    alloc = Allocator(store)
    alloc._rebuild()  # the leader's loop starts on the empty store
    ingress = Network(id="ing", vni=4096, spec=NetworkSpec(annotations=Annotations(name="ingress"), ingress=True),
                      ipam=IPAMOptions(configs=(IPAMConfig(subnet="10.0.0.0/30", gateway="10.0.0.1"),)))
    await store.update(lambda tx: [tx.create(Node(id="n1")), tx.create(ingress)])
    await alloc._pass(full=True)
    n1 = store.view().node("n1")
    assert n1 is not None and [a.addresses for a in n1.attachments] == [("10.0.0.2/30",)]


async def test_nodes_left_without_an_ingress_address_are_not_rewritten_until_one_frees() -> None:
    """More nodes than ingress addresses: the allocator gives out what there is and then writes nothing more (it
    used to rewrite every address-less node on each pass, and each rewrite started the next pass: a busy loop of
    store writes); a freed address goes to a node that had none."""
    from shoal.model.objects import Node, NodeStatus

    async with rig() as r:
        ingress = await r.api.create_network(NetworkSpec(annotations=Annotations(name="ingress"), ingress=True,
                                                         ipam=IPAMOptions(configs=(IPAMConfig(
                                                             subnet="10.255.0.0/29"),))))
        free = 8 - 3  # network, broadcast, gateway
        await r.store.update(lambda tx: [tx.create(Node(id=f"n{i}")) for i in range(free + 3)])

        def with_addr(v: ReadTx) -> set[str]:
            return {n.id for n in v.nodes() if any(att.network_id == ingress.id for att in n.attachments)}

        await until(r.store, lambda v: len(with_addr(v)) == free, "the free addresses given out")
        version = r.store.version
        await r.alloc._pass(full=True)  # a pass over a full network: nothing to write
        assert r.store.version == version
        # a status change of an address-less node does not start another pass either
        left = sorted({n.id for n in r.store.view().nodes()} - with_addr(r.store.view()))
        await r.store.update(lambda tx: tx.update(replace(tx.node(left[0]), status=NodeStatus(state="ready")),
                                                  check_version=False))
        version = r.store.version
        await r.alloc._pass(full=False)
        assert r.store.version == version
        # a node removed frees its address: one of the nodes without one gets it
        gone = sorted(with_addr(r.store.view()))[0]
        await r.store.update(lambda tx: tx.delete("node", gone))
        await until(r.store, lambda v: len(with_addr(v)) == free and gone not in with_addr(v), "the address reused")
        assert r.alloc.ipam.free_count(ingress.id) == 0
