"""Overlay subnets chosen around what the nodes route (shoal.manager.allocator.allocate_subnet and the
network create of shoal.manager.controlapi): the e2e side is tests/e2e/test_subnet_collision.py."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from shoal.manager.allocator import PoolExhausted, allocate_subnet
from shoal.manager.controlapi import ControlAPI
from shoal.model.objects import Annotations, Cluster, NetworkSpec, Node, NodeDescription
from shoal.store.memory import Tx
from shoal.testing.clock import VirtualClock
from shoal.testing.sim import memory_store


def test_routed_subnets_are_skipped() -> None:
    assert allocate_subnet(["10.0.0.0/24"], ("10.0.0.0/8",), 24) == "10.0.1.0/24"
    assert allocate_subnet(["10.0.0.0/24"], ("10.0.0.0/8",), 24, ["10.0.1.0/24", "10.0.2.7/32"]) == "10.0.3.0/24"
    assert allocate_subnet([], ("10.0.0.0/8",), 24, ["not-a-subnet", "10.0.0.0/23"]) == "10.0.2.0/24"


def test_a_pool_all_routed_still_allocates_what_no_network_uses() -> None:
    assert allocate_subnet(["10.9.0.0/24"], ("10.9.0.0/23",), 24, ["10.0.0.0/8"]) == "10.9.1.0/24"
    with pytest.raises(PoolExhausted):
        allocate_subnet(["10.9.0.0/23"], ("10.9.0.0/23",), 24, ["10.0.0.0/8"])


async def test_network_create_avoids_every_nodes_routed_subnets() -> None:
    clock = VirtualClock()
    store = memory_store(clock)

    def nodes(tx: Tx) -> None:
        tx.create(Cluster(id="c1", default_addr_pool=("10.0.0.0/8",), subnet_size=24))
        for i, routed in enumerate([("10.0.1.0/24",), ("10.0.2.0/24", "192.168.0.0/16")]):
            tx.create(Node(id=f"n{i}", description=NodeDescription(hostname=f"h{i}", routed_subnets=routed)))

    await store.update(nodes)
    api = ControlAPI(store, clock, random.Random(1))
    first = await api.create_network(NetworkSpec(annotations=Annotations(name="first")))
    assert first.ipam.configs[0].subnet == "10.0.0.0/24"
    net = await api.create_network(NetworkSpec(annotations=Annotations(name="appnet")))
    assert net.ipam.configs[0].subnet == "10.0.3.0/24"
    # A subnet the user asks for is theirs, as with Swarm.
    spec = NetworkSpec(annotations=Annotations(name="mine"))
    given = await api.create_network(replace(spec, ipam=replace(net.ipam, configs=(replace(
        net.ipam.configs[0], subnet="10.0.1.0/24", gateway=""),))))
    assert given.ipam.configs[0].subnet == "10.0.1.0/24"
