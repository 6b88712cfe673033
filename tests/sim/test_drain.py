"""A drain that keeps services up: a start-first service's task on a drained node stops only once its
replacement runs (healthy) elsewhere; stop-first services and global ones leave at once, as in Swarm."""

from __future__ import annotations

from dataclasses import replace

from shoal.manager.orchestrator.reconcile import LABEL_REPLACES
from shoal.model.objects import SECOND, HealthConfig, ServiceSpec, Task, UpdateConfig
from shoal.model.state import TaskState
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, service_spec, with_image

START_FIRST = UpdateConfig(order="start-first")


def running(t: Task) -> bool:
    return t.status.state == TaskState.RUNNING


def checked(spec: ServiceSpec) -> ServiceSpec:
    tmpl = spec.task_template
    hc = HealthConfig(test=("CMD", "true"), interval=SECOND)
    return replace(spec, task_template=replace(tmpl, container=replace(tmpl.container, healthcheck=hc)))


async def test_start_first_keeps_every_replica_running_through_a_drain() -> None:
    async with SimCluster.started(nodes=3) as sim:
        keep = await sim.create_service(service_spec("keep", replicas=3, update=START_FIRST))
        plain = await sim.create_service(service_spec("plain", replicas=3))
        await sim.wait_until(lambda: sim.converged(keep.id, 3) and sim.converged(plain.id, 3))
        drained = next(t.node_id for t in sim.running(keep.id))
        on_it = {t.id for t in sim.running(keep.id) if t.node_id == drained}
        mark = len(sim.log)
        await sim.set_availability(drained, "drain")
        await sim.wait_until(lambda: sim.converged(keep.id, 3) and sim.converged(plain.id, 3)
                             and all(t.node_id != drained for t in sim.live(keep.id) + sim.live(plain.id)))
        # Never fewer than three running for the start-first service; the stop-first one dips, as in Swarm.
        assert min(sim.concurrency(keep.id, running, since=mark)) == 3
        assert min(sim.concurrency(plain.id, running, since=mark)) == 2
        moved = [t for t in sim.running(keep.id) if LABEL_REPLACES in t.annotations.labels]
        assert {t.annotations.labels[LABEL_REPLACES] for t in moved} == on_it
        assert sim.manager.stats.moves[(keep.id, "drain")] == len(on_it)  # shoal_task_moves_total
        assert (plain.id, "drain") not in sim.manager.stats.moves
        assert all(t.node_id != drained for t in moved)
        # The drained task stopped after its replacement ran, not before.
        for t in moved:
            old = t.annotations.labels[LABEL_REPLACES]
            started = sim.first_time(lambda x, i=t.id: x.id == i and running(x))
            stopped = sim.first_time(lambda x, o=old: x.id == o and x.desired_state == TaskState.SHUTDOWN)
            assert started is not None and stopped is not None and stopped >= started


async def test_the_drained_task_waits_for_its_replacement_to_be_healthy() -> None:
    async with SimCluster.started(nodes=2) as sim:
        # Replacements report "starting" for 4 s of 0.25 s polls, then healthy; the first tasks are healthy.
        sim.behave(lambda t: FakeBehavior(exit_code=None, healthy=[None] * 16 + [True])
                   if LABEL_REPLACES in t.annotations.labels else FakeBehavior(exit_code=None, healthy=[True]))
        svc = await sim.create_service(checked(service_spec(replicas=2, update=START_FIRST)))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        drained = sim.running(svc.id)[0].node_id
        mark, t0 = len(sim.log), sim.now
        await sim.set_availability(drained, "drain")
        await sim.wait_until(lambda: sim.converged(svc.id, 2) and all(t.node_id != drained
                                                                     for t in sim.live(svc.id)))
        assert min(sim.concurrency(svc.id, running, since=mark)) == 2
        (moved,) = [t for t in sim.running(svc.id) if LABEL_REPLACES in t.annotations.labels]
        stopped = sim.first_time(lambda x: x.id == moved.annotations.labels[LABEL_REPLACES]
                                 and x.desired_state == TaskState.SHUTDOWN)
        assert stopped is not None and stopped - t0 >= 4.0  # not before the replacement was healthy
        assert moved.status.healthy is True


async def test_a_drain_that_cannot_place_the_replacement_keeps_the_last_replica_and_says_why() -> None:
    async with SimCluster.started(nodes=1) as sim:
        svc = await sim.create_service(service_spec(replicas=1, update=START_FIRST))
        await sim.wait_until(lambda: sim.converged(svc.id, 1))
        (first,) = sim.running(svc.id)
        await sim.set_availability(first.node_id, "drain")

        def pending() -> list[Task]:
            return [t for t in sim.tasks(svc.id) if LABEL_REPLACES in t.annotations.labels
                    and t.status.state == TaskState.PENDING and t.status.err]

        await sim.wait_until(lambda: bool(pending()))
        await sim.run_for(30)
        assert [t.id for t in sim.running(svc.id)] == [first.id]  # still up, still desired running
        assert sim.tasks(svc.id)[0].desired_state == TaskState.RUNNING or \
            next(t for t in sim.tasks(svc.id) if t.id == first.id).desired_state == TaskState.RUNNING
        assert "no suitable node" in pending()[0].status.err, pending()[0].status.err
        # Activated again: the replacement runs there and the move completes (one task, not two).
        await sim.set_availability(first.node_id, "active")
        await sim.wait_until(lambda: sim.converged(svc.id, 1) and first.id not in {t.id for t in sim.live(svc.id)})
        await sim.run_for(30)
        assert len(sim.running(svc.id)) == 1


async def test_global_services_leave_a_drained_node_at_once() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(service_spec(kind="global", update=START_FIRST))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        drained = sim.running(svc.id)[0].node_id
        await sim.set_availability(drained, "drain")
        await sim.wait_until(lambda: sim.converged(svc.id, 1))
        assert not any(LABEL_REPLACES in t.annotations.labels for t in sim.tasks(svc.id))


async def test_a_drain_during_a_start_first_update_keeps_capacity_and_converges() -> None:
    async with SimCluster.started(nodes=2) as sim:
        sim.behave(lambda t: FakeBehavior(exit_code=None, healthy=[None] * 8 + [True])
                   if t.spec.container.image == "app:2" else FakeBehavior(exit_code=None, healthy=[True]))
        svc = await sim.create_service(checked(service_spec(replicas=2, update=START_FIRST)))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        drained = sim.running(svc.id)[0].node_id
        mark = len(sim.log)
        await sim.update_service(svc.id, lambda s: with_image(s, "app:2"))
        await sim.set_availability(drained, "drain")
        await sim.wait_until(lambda: sim.converged(svc.id, 2) and sim.update_state(svc.id) == "completed"
                             and all(t.node_id != drained for t in sim.live(svc.id)))
        assert min(sim.concurrency(svc.id, running, since=mark)) == 2
        assert {t.spec.container.image for t in sim.running(svc.id)} == {"app:2"}
        await sim.run_for(60)
        assert sim.converged(svc.id, 2)
