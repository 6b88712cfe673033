"""The network side through the whole simulated cluster (orchestrator, allocator, scheduler, dispatcher and
fake agents on virtual time): address churn without leaks, `tasks.<name>` following the cluster, and a node's
changed description reaching the manager. The unit tests of the same parts are tests/unit/test_net_ipam.py,
tests/unit/test_net_dns.py and tests/unit/test_subnet_avoid.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shoal.manager.allocator import Allocator
from shoal.model.objects import (
    Annotations,
    IPAMConfig,
    IPAMOptions,
    NetworkAttachmentConfig,
    NetworkSpec,
    Resources,
    RestartPolicy,
)
from shoal.model.state import TaskState
from shoal.net.directory import StoreDirectory
from shoal.store.memory import ReadTx
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, service_spec, with_replicas


def held_addresses(v: ReadTx, net_id: str) -> list[str]:
    return [a for t in v.tasks() if t.status.state < TaskState.COMPLETE
            for att in t.networks if att.network_id == net_id for a in att.addresses]


CYCLES = 400


async def test_churn_through_the_whole_cluster_simulation() -> None:
    """Tasks that keep exiting and restarting on three fake nodes (orchestrator, scheduler, dispatcher,
    agents, history reaper) for hundreds of cycles; afterwards the full network is allocatable again."""
    async with SimCluster.started(nodes=3) as sim:
        net = await sim.api.create_network(NetworkSpec(annotations=Annotations(name="mesh"),
                                                       ipam=IPAMOptions(configs=(IPAMConfig(
                                                           subnet="10.66.0.0/28"),))))
        capacity = 13 - 1  # 16 - network - broadcast - gateway, minus the VIP
        sim.behave(lambda t: FakeBehavior(exit_code=1, run_for=1.0))
        spec = service_spec("flappy", replicas=6, restart=RestartPolicy(condition="any", delay=0))
        spec = replace(spec, task_template=replace(spec.task_template,
                                                   networks=(NetworkAttachmentConfig(target=net.id),)))
        svc = await sim.create_service(spec)

        seen = [0, 0]  # log entries looked at, task creations among them

        def started() -> int:
            for c in sim.log[seen[0]:]:
                seen[1] += c.kind == "task" and c.action == "create"
            seen[0] = len(sim.log)
            return seen[1]

        await sim.wait_until(lambda: started() >= CYCLES, timeout=10_000, what=f"{CYCLES} task starts")
        sim.rules.clear()
        await sim.update_service(svc.id, lambda s: with_replicas(s, capacity))
        await sim.wait_until(lambda: len(sim.running(svc.id)) == capacity, timeout=600,
                             what="every address of the network in use at once")
        held = held_addresses(sim.view(), net.id)
        assert len(held) == len(set(held)) == capacity
        await sim.api.remove_service(svc.id)
        await sim.wait_until(lambda: not held_addresses(sim.view(), net.id) and sim.view().service(svc.id) is None,
                             timeout=600, what="service gone")
        fresh = Allocator(sim.store)
        fresh._rebuild()
        assert fresh.ipam.free_count(net.id) == capacity + 1
        # Let the agents wind their task runners down before the cluster stops (cancelling an agent in the
        # middle of shutting tasks down can hang the simulation's teardown: a known agent issue).
        await sim.wait_until(lambda: all(not n.agent.runners for n in sim.nodes.values()), timeout=600,
                             what="agents idle")


@pytest.mark.parametrize("replicas", [3])
async def test_tasks_name_follows_the_simulated_cluster(replicas: int) -> None:
    """Through the real orchestrator, allocator and agents: `tasks.<name>` is exactly the running replicas
    after a scale down and after a task dies."""
    async with SimCluster.started(nodes=2) as sim:
        net = await sim.api.create_network(NetworkSpec(annotations=Annotations(name="appnet")))
        spec = service_spec("app", replicas=replicas)
        spec = replace(spec, task_template=replace(spec.task_template,
                                                   networks=(NetworkAttachmentConfig(target=net.id),)))
        svc = await sim.create_service(spec)
        directory = StoreDirectory(sim.store)
        directory.start()
        try:
            def running_ips() -> list[str]:
                return sorted(a.split("/")[0] for t in sim.running(svc.id) for att in t.networks
                              if att.network_id == net.id for a in att.addresses)

            async def settled(n: int) -> None:
                await sim.wait_until(lambda: len(sim.running(svc.id)) == n)
                await directory.synced(sim.store.version)

            await settled(replicas)
            assert sorted(directory.lookup("tasks.app", net.id)) == running_ips()
            vip = sim.service(svc.id).endpoint.virtual_ips[0].addr.split("/")[0]
            assert directory.lookup("app", net.id) == [vip]
            await sim.update_service(svc.id, lambda s: with_replicas(s, 2))
            await settled(2)
            assert sorted(directory.lookup("tasks.app", net.id)) == running_ips()
            victim = sim.running(svc.id)[0]
            node = sim.nodes[victim.node_id]
            await node.executor.controllers[victim.id].terminate()  # killed behind the agent's back
            await sim.wait_until(lambda: sim.view().task(victim.id).status.state > TaskState.RUNNING)
            await directory.synced(sim.store.version)
            dead_ip = victim.networks[0].addresses[0].split("/")[0]
            assert dead_ip not in directory.lookup("tasks.app", net.id)
            await settled(2)
            assert sorted(directory.lookup("tasks.app", net.id)) == running_ips()
        finally:
            await directory.close()


async def test_a_changed_node_description_reaches_the_manager() -> None:
    """An engine network made after the node registered must still count: the agent registers again once
    its description changes (here: the fake executor's resources), within swarmkit's 20 s period."""
    async with SimCluster.started(nodes=1) as sim:
        (nid,) = sim.nodes
        sim.nodes[nid].executor.resources = Resources(nano_cpus=7 * 10**9, memory_bytes=1 << 30)
        took = await sim.wait_until(lambda: sim.node(nid).description.resources.nano_cpus == 7 * 10**9,
                                    timeout=60, what="the new description in the store")
        assert took <= 45
        assert sim.node(nid).status.state == "ready"
