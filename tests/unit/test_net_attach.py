"""Network attachments of plain containers (shoal.manager.attachments) through the real allocator: an address
from IPAM, refused on a network that is not attachable, a clear error when the network is full, released on
detach and with the node, never handed to an agent, and named in the node's DNS directory."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from shoal.api.attachments import is_attachment
from shoal.errors import NotFound, ShoalError
from shoal.ids import new_id
from shoal.manager import attachments
from shoal.manager.allocator import Allocator
from shoal.manager.dispatcher import assigned_to
from shoal.model.objects import Annotations, IPAMConfig, IPAMOptions, Network, NetworkSpec, Node
from shoal.model.state import TaskState
from shoal.net.state import SnapshotDirectory, snapshot
from tests.unit.test_net_ipam import Rig, rig, until

RNG = random.Random(3)


async def attachable(r: Rig, name: str, subnet: str, *, attachable: bool = True) -> Network:
    return await r.api.create_network(NetworkSpec(annotations=Annotations(name=name), attachable=attachable,
                                                  ipam=IPAMOptions(configs=(IPAMConfig(subnet=subnet),))))


async def attach(r: Rig, node: str, container: str, ref: str, **kw: object) -> object:
    return await attachments.attach(r.store, node, container, ref, task_id=new_id(RNG), **kw)  # type: ignore[arg-type]


async def test_an_attachment_gets_an_address_and_gives_it_back() -> None:
    async with rig() as r:
        await r.store.update(lambda tx: tx.create(Node(id="n1")))
        net = await attachable(r, "attnet", "10.99.0.0/24")
        free = 256 - 3  # network, gateway, broadcast
        t = await attach(r, "n1", "c1", "attnet", name="db", aliases=("legacy",))
        assert isinstance(t, attachments.Task)
        assert is_attachment(t) and t.status.state == TaskState.RUNNING and t.service_id == ""
        (att,) = t.networks
        assert att.network_id == net.id and att.addresses[0].startswith("10.99.0.")
        assert r.alloc.ipam.free_count(net.id) == free - 1
        # Asking again for the same container and network is the same attachment (dockerd's attacher map).
        again = await attach(r, "n1", "c1", net.id)
        assert isinstance(again, attachments.Task) and again.id == t.id
        # Nothing runs it: the dispatcher does not send it to the node's agent.
        assert not assigned_to(t, "n1")
        # The node's DNS directory knows the container by its name and aliases on that network.
        d = SnapshotDirectory("n1")
        d.update(snapshot(r.store.view(), r.store.version))
        ip = att.addresses[0].split("/")[0]
        assert d.lookup("db", net.id) == [ip] and d.lookup("legacy", net.id) == [ip]
        assert d.reverse(ip, net.id) == ["db"]
        # The network cannot go while the container is on it.
        with pytest.raises(ShoalError, match="is in use by task"):
            await r.api.remove_network(net.id)
        await attachments.detach(r.store, "n1", t.id)
        await until(r.store, lambda v: v.task(t.id) is None, "attachment gone")
        # The allocator handles its watch in order: once a later attachment is allocated, the release was seen.
        later = await attach(r, "n1", "c9", "attnet")
        assert isinstance(later, attachments.Task)
        assert r.alloc.ipam.free_count(net.id) == free - 1
        await attachments.detach(r.store, "n1", later.id)
        await attachments.detach(r.store, "n1", t.id)  # idempotent
        await r.api.remove_network(net.id)


async def test_refusals_as_dockerd_words_them() -> None:
    async with rig() as r:
        await r.store.update(lambda tx: tx.create(Node(id="n1")))
        await attachable(r, "closed", "10.98.0.0/24", attachable=False)
        with pytest.raises(ShoalError) as e:
            await attach(r, "n1", "c1", "closed")
        assert e.value.message == "rpc error: code = PermissionDenied desc = network closed not manually attachable"
        assert e.value.status == 403
        with pytest.raises(NotFound, match="network nope not found"):
            await attach(r, "n1", "c1", "nope")
        assert [t for t in r.store.view().tasks() if is_attachment(t)] == []


async def test_a_full_network_is_a_clear_error_and_leaves_nothing_behind() -> None:
    async with rig() as r:
        await r.store.update(lambda tx: tx.create(Node(id="n1")))
        net = await attachable(r, "tiny", "10.97.0.0/30")  # one usable address besides the gateway
        first = await attach(r, "n1", "c1", "tiny")
        assert isinstance(first, attachments.Task)
        with pytest.raises(ShoalError, match="no IP addresses available on network tiny"):
            await attach(r, "n1", "c2", "tiny")
        await until(r.store, lambda v: [t.id for t in v.tasks() if is_attachment(t)] == [first.id],
                    "the refused attachment deleted")
        assert r.alloc.ipam.free_count(net.id) == 0


async def test_attachments_go_with_their_node_and_survive_a_new_leader() -> None:
    async with rig() as r:
        await r.store.update(lambda tx: [tx.create(Node(id=n)) for n in ("n1", "n2")])
        net = await attachable(r, "attnet", "10.96.0.0/24")
        free = 256 - 3
        a1 = await attach(r, "n1", "c1", "attnet")
        a2 = await attach(r, "n2", "c1", "attnet")
        assert isinstance(a1, attachments.Task) and isinstance(a2, attachments.Task)
        assert a1.networks[0].addresses != a2.networks[0].addresses
        with pytest.raises(ShoalError, match="doesn't belong to this node"):
            await attachments.detach(r.store, "n2", a1.id)
        fresh = Allocator(r.store)  # a new leader's allocator counts them as taken
        fresh._rebuild()
        assert fresh.ipam.free_count(net.id) == free - 2
        await r.store.update(lambda tx: tx.delete("node", "n1"))
        await until(r.store, lambda v: v.task(a1.id) is None, "n1's attachment deleted with it")
        assert r.store.view().task(a2.id) is not None
        a3 = await attach(r, "n2", "c3", "attnet")  # allocated after the deletion was handled
        assert isinstance(a3, attachments.Task)
        assert r.alloc.ipam.free_count(net.id) == free - 2


async def test_a_worker_asks_the_leader_over_the_network_service(tmp_path: Path) -> None:
    """shoal.node.attacher from a worker: the Network service's Attach/Detach on its session's channel, with the
    leader's errors as dockerd prints them and the caller's certificate deciding whose attachment it is."""
    from shoal import ca as CA
    from shoal.clock import SystemClock
    from shoal.manager.controlapi import ControlAPI
    from shoal.manager.dispatcher import Dispatcher
    from shoal.model.objects import NodeDescription
    from shoal.node.attacher import Attacher
    from shoal.rpc import client as C
    from shoal.rpc.server import ManagerRPC
    from tests.unit.test_rpc_security import make_cluster

    rng = random.Random(11)
    store, cluster = await make_cluster(rng)
    d = Dispatcher(store, SystemClock())
    alloc = Allocator(store)
    loops = [asyncio.create_task(d.run()), asyncio.create_task(alloc.run())]
    rpc = ManagerRPC(store, d, SystemClock(), rng, "mgr1", "127.0.0.1:0", "127.0.0.1")
    await rpc.start()
    rd: C.RemoteDispatcher | None = None
    try:
        api = ControlAPI(store, SystemClock(), random.Random(1))
        net = await api.create_network(NetworkSpec(annotations=Annotations(name="attnet"), attachable=True,
                                                   ipam=IPAMOptions(configs=(IPAMConfig(subnet="10.95.0.0/24"),))))
        await api.create_network(NetworkSpec(annotations=Annotations(name="closed"),
                                             ipam=IPAMOptions(configs=(IPAMConfig(subnet="10.94.0.0/24"),))))
        j = await C.join([f"127.0.0.1:{rpc.port}"], cluster.join_tokens.worker, CA.new_key_pem(), "w1", "active")
        rd = C.RemoteDispatcher([f"127.0.0.1:{rpc.port}"], j.creds)
        await rd.register(j.node_id, NodeDescription(hostname="w1"), "")

        class Worker:  # what Attacher reads of a ShoalNode
            node_id, store, is_leader, remote = j.node_id, None, False, rd

        attacher = Attacher(Worker(), timeout=5)
        t = await attacher.attach("c1", "attnet", name="db")
        assert t.node_id == j.node_id and t.networks[0].network_id == net.id
        assert store.view().task(t.id) is not None
        with pytest.raises(ShoalError) as e:
            await attacher.attach("c1", "closed")
        assert e.value.message == "rpc error: code = PermissionDenied desc = network closed not manually attachable"
        with pytest.raises(NotFound):
            await attacher.attach("c1", "nope")
        # Another node's attachment cannot be detached with this node's certificate.
        other = await attachments.attach(store, "mgr1", "c7", "attnet", task_id=new_id(RNG))
        with pytest.raises(ShoalError, match="doesn't belong to this node"):
            await attacher.detach(other.id)
        await attacher.detach(t.id)
        assert store.view().task(t.id) is None
    finally:
        if rd is not None:
            await rd.close()
        await rpc.stop()
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
