"""The leader's side of usage reports: the wire format, the in-memory store (staleness, nodes that went away),
the `/_shoal/usage` document, and the leader-only metrics (usage, heartbeats, task failures and restarts)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from shoal.api import reasons
from shoal.api import usage as usage_api
from shoal.api.usage import HostUsage, NodeUsage, TaskUsage
from shoal.errors import InvalidArgument
from shoal.manager.manager import Manager
from shoal.manager.usage import UsageStore, usage_document
from shoal.metrics.daemon import DaemonMetrics
from shoal.model.objects import (
    Annotations,
    ContainerStatus,
    Node,
    NodeDescription,
    NodeStatus,
    ResourceRequirements,
    Resources,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.clock import VirtualClock
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, memory_store, on_service, service_spec
from tests.support.dispatcher import running_leader
from tests.unit.test_metrics import Source


def report(*tasks: tuple[str, str, float | None, int], at: float = 1.0) -> NodeUsage:
    return NodeUsage(taken_at=at, tasks=tuple(TaskUsage(task_id=t, service_id=s, cpus=c, window=10.0,
                                                        memory_bytes=m, source="proc") for t, s, c, m in tasks),
                     host=HostUsage(cpus=1.5, memory_bytes=3 << 30))


def test_wire_round_trip_and_refusals() -> None:
    r = report(("t1", "s1", 0.5, 100), ("t2", "s1", None, 7))
    assert usage_api.decode(usage_api.encode(r)) == r
    assert usage_api.decode(usage_api.encode(NodeUsage(taken_at=2.0))) == NodeUsage(taken_at=2.0)
    for bad in (b"{", b"[]", b'{"tasks": []}', b'{"taken_at": 1, "tasks": [{"task_id": "t", "cpus": -1}]}',
                b'{"taken_at": 1, "tasks": [{"task_id": "t", "memory_bytes": 1.5}]}',
                b'{"taken_at": 1, "tasks": [{"task_id": "t", "cpus": true}]}'):
        with pytest.raises(InvalidArgument, match="invalid usage report"):
            usage_api.decode(bad)


async def test_store_forgets_stale_reports_and_filters_dead_nodes() -> None:
    clock = VirtualClock()
    s = UsageStore(clock, stale_after=30.0)
    s.put("n1", report(("t1", "s1", 1.0, 1)))
    await clock.advance(20.0)
    s.put("n2", report(("t2", "s1", 1.0, 1)))
    assert {k: age for k, (_, age) in s.current().items()} == {"n1": 20.0, "n2": 0.0}
    assert set(s.current(lambda nid: nid != "n2")) == {"n1"}
    await clock.advance(15.0)
    assert set(s.current()) == {"n2"}  # n1's is 35 s old
    s.drop("n2")
    assert s.current() == {}


def seed(tx: Tx) -> None:
    for nid in ("n1", "n2"):
        tx.create(Node(id=nid, description=NodeDescription(hostname=f"host-{nid}", resources=Resources(
            nano_cpus=2 * 10**9, memory_bytes=4 << 30)), status=NodeStatus(state="unknown")))
    tx.create(Service(id="s1", spec=ServiceSpec(annotations=Annotations(name="web"), mode=ServiceMode(replicas=2))))
    tx.create(Service(id="s2", spec=ServiceSpec(annotations=Annotations(name="idle"), mode=ServiceMode(replicas=0))))
    spec = TaskSpec(resources=ResourceRequirements(reservations=Resources(nano_cpus=10**9, memory_bytes=1 << 30)))
    for tid, nid, slot in (("t1", "n1", 1), ("t2", "n2", 2)):
        tx.create(Task(id=tid, service_id="s1", node_id=nid, slot=slot, spec=spec,
                       status=TaskStatus(state=TaskState.RUNNING)))


@pytest.fixture
async def leader() -> AsyncIterator[tuple[VirtualClock, MemoryStore, Manager]]:
    async with running_leader(seed, lambda store, clock: Manager(store, clock, random.Random(1)),
                              lambda m: m.dispatcher) as env:
        yield env


async def test_heartbeats_carry_reports_to_the_document_and_metrics(
        leader: tuple[VirtualClock, MemoryStore, Manager]) -> None:
    clock, store, manager = leader
    d = manager.dispatcher
    for nid in ("n1", "n2"):
        await d.register(nid, NodeDescription(hostname=f"host-{nid}"), "")
    # t9 is not in the store (removed meanwhile), t2 is not on n1: neither is shown.
    await d.heartbeat("n1", report(("t1", "s1", 0.75, 100 << 20), ("t9", "s1", 5.0, 1), ("t2", "s1", 5.0, 1)))
    await d.heartbeat("n2", None)
    await clock.sleep(2.0)
    await d.heartbeat("n2", report(("t2", "s1", 0.25, 50 << 20)))
    doc = usage_document(store.view(), d.current_usage(), d.usage.stale_after)
    nodes = {n["NodeID"]: n for n in doc["Nodes"]}
    assert nodes["n1"]["UsedCPUs"] == 0.75 and nodes["n1"]["UsedMemoryBytes"] == 100 << 20
    assert nodes["n1"]["ReservedCPUs"] == 1.0 and nodes["n1"]["ReservedMemoryBytes"] == 1 << 30
    assert nodes["n1"]["Age"] == 2.0 and nodes["n2"]["Age"] == 0.0
    assert nodes["n1"]["Host"] == {"UsedCPUs": 1.5, "UsedMemoryBytes": 3 << 30}
    assert nodes["n1"]["Tasks"] == 1
    services = {s["Name"]: s for s in doc["Services"]}
    assert services["web"] == {"ID": "s1", "Name": "web", "UsedCPUs": 1.0, "UsedMemoryBytes": 150 << 20, "Tasks": 2}
    assert services["idle"]["Tasks"] == 0 and services["idle"]["UsedCPUs"] == 0.0
    assert sorted((t["ID"], t["NodeID"], t["ServiceName"], t["Slot"]) for t in doc["Tasks"]) == \
        [("t1", "n1", "web", 1), ("t2", "n2", "web", 2)]

    reg = DaemonMetrics(Source(store=store, manager=manager)).registry

    def val(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert val("shoal_node_used_cpus", node_id="n1", hostname="host-n1") == 0.75
    assert val("shoal_node_used_memory_bytes", node_id="n2", hostname="host-n2") == 50 << 20
    assert val("shoal_node_host_used_cpus", node_id="n1", hostname="host-n1") == 1.5
    assert val("shoal_node_usage_report_age_seconds", node_id="n1", hostname="host-n1") == 2.0
    assert val("shoal_service_used_cpus", service="web") == 1.0
    assert val("shoal_service_used_memory_bytes", service="idle") == 0
    assert val("shoal_dispatcher_heartbeats_total") == 3
    assert val("shoal_dispatcher_heartbeats_late_total") == 0
    assert val("shoal_dispatcher_sessions") == 2
    assert val("shoal_node_heartbeat_age_seconds", node_id="n1", hostname="host-n1") == 2.0

    # n1 falls silent: three periods later its session expires, the node is down and its report is gone.
    for _ in range(6):
        await clock.sleep(3.0)
        await d.heartbeat("n2")
    assert store.view().node("n1").status.state == "down"  # type: ignore[union-attr]
    assert set(d.current_usage()) == {"n2"}
    assert val("shoal_dispatcher_sessions_expired_total", reason="heartbeat") == 1
    assert val("shoal_dispatcher_sessions_expired_total", reason="connection") == 0
    assert val("shoal_node_used_cpus", node_id="n1", hostname="host-n1") is None
    assert val("shoal_dispatcher_heartbeats_late_total") == 0  # n2 beat every 3 s (period 5 s)
    await clock.sleep(8.0)
    await d.heartbeat("n2")
    assert val("shoal_dispatcher_heartbeats_late_total") == 1  # 8 s: one beat missed
    # n2 beats but sends no new report: after STALE_AFTER its old one is no longer shown.
    for _ in range(12):
        await clock.sleep(3.0)
        await d.heartbeat("n2")
    assert d.current_usage() == {}
    doc = usage_document(store.view(), d.current_usage(), d.usage.stale_after)
    assert all(n["Reported"] is False and n["UsedCPUs"] is None for n in doc["Nodes"]) and doc["Tasks"] == []


async def test_a_follower_shows_no_leader_series() -> None:
    store = memory_store(VirtualClock())
    await store.update(seed)
    manager = Manager(store, VirtualClock(), random.Random(1))  # its dispatcher is not running
    reg = DaemonMetrics(Source(store=store, manager=manager, is_leader=False)).registry
    names = {m.name for m in reg.collect()}
    assert not names & {"shoal_node_used_cpus", "shoal_dispatcher_heartbeats", "shoal_task_failures"}
    assert reg.get_sample_value("shoal_scheduler_unplaceable_tasks", {"service": "web"}) == 0
    # A pending task the scheduler explained (no node fits) is unplaceable; one not looked at yet is not.
    await store.update(lambda tx: (
        tx.create(Task(id="t3", service_id="s1", slot=3, status=TaskStatus(
            state=TaskState.PENDING, err="no suitable node (insufficient resources on 2 nodes)"))),
        tx.create(Task(id="t4", service_id="s1", slot=4, status=TaskStatus(state=TaskState.PENDING)))))
    assert reg.get_sample_value("shoal_scheduler_unplaceable_tasks", {"service": "web"}) == 1
    assert reg.get_sample_value("shoal_scheduler_unplaceable_tasks", {"service": "idle"}) == 0


def test_end_reasons() -> None:
    def ended(state: TaskState, err: str = "", oom: bool = False) -> Task:
        return Task(id="t", status=TaskStatus(state=state, err=err,
                                              container=ContainerStatus(exit_code=137, oom_killed=oom)))

    assert reasons.end_reason(ended(TaskState.COMPLETE)) == reasons.COMPLETED
    assert reasons.end_reason(ended(TaskState.FAILED, "task: non-zero exit (1)")) == reasons.EXIT_NONZERO
    assert reasons.end_reason(ended(TaskState.FAILED, "task: non-zero exit (137): dockerexec: unhealthy container")) \
        == reasons.UNHEALTHY
    assert reasons.end_reason(ended(TaskState.FAILED, "task: non-zero exit (137)", oom=True)) == reasons.OOM_KILLED
    assert reasons.end_reason(ended(TaskState.REJECTED, "No such image: x")) == reasons.REJECTED
    assert reasons.end_reason(ended(TaskState.FAILED, "starting container failed")) == reasons.FAILED
    assert reasons.end_reason(ended(TaskState.SHUTDOWN)) == reasons.SHUTDOWN


async def test_sim_counts_failures_and_restarts_by_reason_and_reports_usage() -> None:
    """The whole leader on virtual time: a crashing service's tasks count as failed and restarted for
    exit_nonzero, the tasks of a node that goes down for node_down, and the fake executor's usage reaches the
    leader."""
    async with SimCluster.started(nodes=2, seed=3) as sim:
        sim.behave(on_service("crash", FakeBehavior(exit_code=2, run_for=1.0)))
        sim.behave(on_service("busy", FakeBehavior(exit_code=None, cpus=0.5, memory_bytes=10 << 20)))
        crash = await sim.create_service(service_spec("crash", replicas=1))
        busy = await sim.create_service(service_spec("busy", replicas=2))
        await sim.wait_until(lambda: len(sim.running(busy.id)) == 2, what="busy running")
        await sim.wait_until(lambda: sim.manager.stats.restarts[(crash.id, reasons.EXIT_NONZERO)] >= 2,
                             what="two restarts of the crashing task")
        assert sim.manager.stats.failures[(crash.id, reasons.EXIT_NONZERO)] >= 2

        def used() -> float:
            doc = usage_document(sim.view(), sim.manager.dispatcher.current_usage(), 35.0)
            return float({s["Name"]: s["UsedCPUs"] for s in doc["Services"]}.get("busy", 0.0))

        await sim.wait_until(lambda: used() == pytest.approx(1.0), what="busy's two tasks at half a core each")
        reg = DaemonMetrics(Source(store=sim.store, manager=sim.manager)).registry
        assert reg.get_sample_value("shoal_task_restarts_total", {"service": "crash", "reason": "exit_nonzero"}) \
            == sim.manager.stats.restarts[(crash.id, reasons.EXIT_NONZERO)]
        assert reg.get_sample_value("shoal_service_used_cpus", {"service": "busy"}) == pytest.approx(1.0)
        assert reg.get_sample_value("shoal_task_failures_total", {"service": "busy", "reason": "node_down"}) == 0

        gone = sim.running(busy.id)[0].node_id
        await sim._stop_agent(sim.nodes[gone])
        await sim.wait_until(lambda: sim.node(gone).status.state == "down", what="the silent node down")
        await sim.wait_until(lambda: sim.manager.stats.restarts[(busy.id, reasons.NODE_DOWN)] >= 1,
                             what="its busy task replaced")
        assert reg.get_sample_value("shoal_task_failures_total", {"service": "busy", "reason": "node_down"}) >= 1
        assert gone not in sim.manager.dispatcher.current_usage()
