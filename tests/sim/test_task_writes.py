"""How many times a new task is written before it reaches its node: a task of a service with nothing to
allocate (no network, no published port) is created PENDING and assigned by the scheduler in the same
transaction, so it is written once, assigned; a task on a network or with a published port is created NEW and
written once more by the allocator, with its addresses, assigned in that same transaction."""

from __future__ import annotations

from dataclasses import replace

from shoal.model.objects import (
    Annotations,
    EndpointSpec,
    NetworkAttachmentConfig,
    NetworkSpec,
    PortConfig,
    Task,
)
from shoal.model.state import TaskState
from shoal.testing.sim import SimCluster, service_spec


def writes_until_assigned(sim: SimCluster, sid: str) -> dict[str, list[TaskState]]:
    """Each task of the service: the states of its writes, from its creation to its assignment."""
    out: dict[str, list[TaskState]] = {}
    for c in sim.log:
        t = c.obj
        if c.kind != "task" or not isinstance(t, Task) or t.service_id != sid:
            continue
        states = out.setdefault(t.id, [])
        if not states or states[-1] < TaskState.ASSIGNED:
            states.append(t.status.state)
    return out


async def test_a_task_is_assigned_in_the_transaction_that_makes_it_pending() -> None:
    async with SimCluster.started(nodes=2) as sim:
        net = await sim.api.create_network(NetworkSpec(annotations=Annotations(name="appnet")))
        plain = await sim.create_service(service_spec("plain", replicas=4))
        spec = service_spec("netted", replicas=4)
        netted = await sim.create_service(replace(spec, task_template=replace(
            spec.task_template, networks=(NetworkAttachmentConfig(target=net.id),))))
        spec = service_spec("ported", replicas=2)
        ported = await sim.create_service(replace(spec, endpoint_spec=EndpointSpec(ports=(
            PortConfig(protocol="tcp", target_port=80, published_port=0, publish_mode="host"),))))
        await sim.wait_until(lambda: sim.converged(plain.id, 4) and sim.converged(netted.id, 4)
                             and sim.converged(ported.id, 2))
        direct = writes_until_assigned(sim, plain.id)
        assert len(direct) == 4
        assert all(s == [TaskState.ASSIGNED] for s in direct.values()), direct
        for sid, n in ((netted.id, 4), (ported.id, 2)):
            allocated = writes_until_assigned(sim, sid)
            assert len(allocated) == n
            assert all(s == [TaskState.NEW, TaskState.ASSIGNED] for s in allocated.values()), allocated
        assert all(t.networks for t in sim.running(netted.id))


async def test_a_task_that_cannot_be_placed_stays_pending_with_the_reason() -> None:
    """The placement in the creating transaction finds no node: the task is written PENDING, and the scheduler's
    loop writes why it waits, then places it once a node fits."""
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(service_spec("nowhere", replicas=2, constraints=("node.labels.zone==x",)))
        await sim.wait_until(lambda: len(sim.tasks(svc.id)) == 2 and all(t.status.err for t in sim.tasks(svc.id)))
        assert all(t.status.state == TaskState.PENDING and not t.node_id for t in sim.tasks(svc.id))
        states = writes_until_assigned(sim, svc.id)
        assert all(s[0] == TaskState.PENDING for s in states.values()), states
        await sim.add_node("zoned", labels={"zone": "x"})
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
