"""Rebalancing under virtual time: a node that joins (or comes back to active) gets its share of the replicated
services that ask for it, gradually, never below the running count with start-first, within constraints, and
not for a node that flaps."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from shoal.manager.orchestrator.rebalance import DEFAULT_SETTLE, LABEL_MOVE, LABEL_REBALANCE
from shoal.manager.orchestrator.reconcile import LABEL_REPLACES
from shoal.model.objects import SECOND, Annotations, Placement, ServiceSpec, Task, UpdateConfig, UpdateStatus
from shoal.model.state import TaskState
from shoal.store.memory import Tx
from shoal.testing.sim import SimCluster, service_spec


def running(t: Task) -> bool:
    return t.status.state == TaskState.RUNNING


def opted(spec: ServiceSpec, value: str = "true") -> ServiceSpec:
    labels = {**spec.annotations.labels, LABEL_REBALANCE: value}
    return replace(spec, annotations=Annotations(name=spec.annotations.name, labels=labels))


def constrained(spec: ServiceSpec, *constraints: str) -> ServiceSpec:
    return replace(spec, task_template=replace(spec.task_template, placement=Placement(constraints=constraints)))


def placement(sim: SimCluster, sid: str) -> dict[str, int]:
    return dict(Counter(sim.node(t.node_id).description.hostname for t in sim.running(sid)))


def rebalance_moves(sim: SimCluster, sid: str) -> list[Task]:
    return [t for t in sim.tasks(sid) if t.annotations.labels.get(LABEL_MOVE) == "rebalance"]


async def test_a_joining_node_gets_its_share_without_losing_capacity() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(opted(service_spec(
            replicas=6, update=UpdateConfig(parallelism=1, delay=2 * SECOND, order="start-first"))))
        other = await sim.create_service(service_spec("other", replicas=6))  # not opted in
        await sim.wait_until(lambda: sim.converged(svc.id, 6) and sim.converged(other.id, 6))
        assert placement(sim, svc.id) == {"node1": 3, "node2": 3}
        mark, t0 = len(sim.log), sim.now
        await sim.add_node("node3")
        took = await sim.wait_until(lambda: placement(sim, svc.id) == {"node1": 2, "node2": 2, "node3": 2}
                                    and sim.converged(svc.id, 6)) - t0
        assert min(sim.concurrency(svc.id, running, since=mark)) == 6  # never fewer running
        assert max(sim.concurrency(svc.id, running, since=mark)) <= 7  # one move at a time (parallelism 1)
        # the node settled first, then two moves, one at a time, 2 s apart
        assert DEFAULT_SETTLE <= took <= DEFAULT_SETTLE + 30, took
        moves = rebalance_moves(sim, svc.id)
        assert len(moves) == 2 and all(sim.node(t.node_id).description.hostname == "node3" for t in moves)
        assert sim.manager.stats.moves[(svc.id, "rebalance")] == 2  # shoal_task_moves_total
        starts = sorted(t.meta.created_at for t in moves)
        assert starts[1] - starts[0] >= 2.0
        await sim.run_for(120)
        assert placement(sim, other.id) == {"node1": 3, "node2": 3}  # not opted in: untouched
        assert len(rebalance_moves(sim, svc.id)) == 2  # and nothing moves back


async def test_constraints_and_the_cluster_default() -> None:
    async with SimCluster.started(nodes=0) as sim:
        await sim.add_node("a", labels={"zone": "x"})
        await sim.add_node("b", labels={"zone": "x"})
        def default_on(tx: Tx) -> None:
            c = tx.cluster()
            assert c is not None
            tx.update(replace(c, spec=replace(c.spec, annotations=Annotations(
                name="default", labels={LABEL_REBALANCE: "true"}))))

        await sim.store.update(default_on)
        pinned = await sim.create_service(constrained(service_spec("pinned", replicas=4), "node.labels.zone==x"))
        free = await sim.create_service(service_spec("free", replicas=4))  # by the cluster's default
        out = await sim.create_service(opted(service_spec("out", replicas=4), "false"))
        await sim.wait_until(lambda: all(sim.converged(s.id, 4) for s in (pinned, free, out)))
        await sim.add_node("c", labels={"zone": "y"})
        await sim.wait_until(lambda: placement(sim, free.id).get("c") == 1 and sim.converged(free.id, 4))
        await sim.run_for(120)
        assert "c" not in placement(sim, pinned.id) and not rebalance_moves(sim, pinned.id)
        assert "c" not in placement(sim, out.id) and not rebalance_moves(sim, out.id)
        assert sorted(placement(sim, free.id).values()) == [1, 1, 2]  # 4 over 3 nodes: within one


async def test_a_flapping_node_attracts_nothing_and_nothing_moves_twice() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(opted(service_spec(replicas=6, update=UpdateConfig(order="start-first"))))
        await sim.wait_until(lambda: sim.converged(svc.id, 6))
        n3 = await sim.add_node("node3")
        for _ in range(5):  # up for less than the settle time, then paused
            await sim.run_for(DEFAULT_SETTLE / 3)
            await sim.set_availability(n3, "pause")
            await sim.run_for(5)
            await sim.set_availability(n3, "active")
        assert rebalance_moves(sim, svc.id) == []
        assert placement(sim, svc.id) == {"node1": 3, "node2": 3}
        # It stays: its share, once, and each task moved at most once.
        await sim.wait_until(lambda: placement(sim, svc.id) == {"node1": 2, "node2": 2, "node3": 2})
        await sim.run_for(120)
        replaced = [t.annotations.labels[LABEL_REPLACES] for t in rebalance_moves(sim, svc.id)]
        assert len(replaced) == 2 and len(set(replaced)) == 2


async def test_stop_first_moves_stop_the_old_task_before_starting_the_new() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(opted(service_spec(replicas=4)))  # update order stop-first (default)
        await sim.wait_until(lambda: sim.converged(svc.id, 4))
        await sim.add_node("node3")
        await sim.wait_until(lambda: placement(sim, svc.id).get("node3") == 1 and sim.converged(svc.id, 4))
        (move,) = rebalance_moves(sim, svc.id)
        old = move.annotations.labels[LABEL_REPLACES]
        stopped = sim.first_time(lambda t: t.id == old and t.status.state >= TaskState.COMPLETE)
        started = sim.first_time(lambda t: t.id == move.id and running(t))
        assert stopped is not None and started is not None and stopped <= started


async def test_a_service_in_an_update_is_not_rebalanced() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(opted(service_spec(replicas=4)))
        await sim.wait_until(lambda: sim.converged(svc.id, 4))
        def paused(tx: Tx) -> None:
            s = tx.service(svc.id)
            assert s is not None
            tx.update(replace(s, update_status=UpdateStatus(state="paused")))

        await sim.store.update(paused)
        await sim.add_node("node3")
        await sim.run_for(DEFAULT_SETTLE + 60)
        assert rebalance_moves(sim, svc.id) == []


async def test_placement_preferences_are_balanced_by_branch() -> None:
    """spread=node.labels.zone: a node of a new zone takes half the tasks (the zones even out), not a node's
    share of the total."""
    async with SimCluster.started(nodes=0) as sim:
        await sim.add_node("a", labels={"zone": "x"})
        await sim.add_node("b", labels={"zone": "x"})
        spec = opted(service_spec(replicas=4, update=UpdateConfig(order="start-first")))
        spec = replace(spec, task_template=replace(spec.task_template, placement=Placement(
            preferences=("spread=node.labels.zone",))))
        svc = await sim.create_service(spec)
        await sim.wait_until(lambda: sim.converged(svc.id, 4) and placement(sim, svc.id) == {"a": 2, "b": 2})
        mark = len(sim.log)
        await sim.add_node("c", labels={"zone": "y"})
        await sim.wait_until(lambda: placement(sim, svc.id) == {"a": 1, "b": 1, "c": 2} and sim.converged(svc.id, 4))
        assert min(sim.concurrency(svc.id, running, since=mark)) == 4
        await sim.run_for(120)
        assert placement(sim, svc.id) == {"a": 1, "b": 1, "c": 2} and len(rebalance_moves(sim, svc.id)) == 2
