"""Scheduler core: filters, constraints, pipeline messages, strategies, and state bookkeeping."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import InvalidArgument
from shoal.manager.scheduler.constraints import parse_constraints
from shoal.manager.scheduler.core import ASSIGNED_MESSAGE, STRATEGY_LABEL, Decision, Scheduler
from shoal.manager.scheduler.filters import (
    ConstraintFilter,
    HostPortFilter,
    MaxReplicasFilter,
    PlatformFilter,
    ReadyFilter,
    ResourceFilter,
)
from shoal.manager.scheduler.nodeinfo import MAX_FAILURES, NodeInfo
from shoal.manager.scheduler.pipeline import Pipeline
from shoal.model.objects import (
    Annotations,
    Endpoint,
    EngineDescription,
    GenericResource,
    Node,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    Placement,
    Platform,
    PortConfig,
    ResourceRequirements,
    Resources,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.model.state import TaskState

GB = 1 << 30
CPU = 1_000_000_000


def mknode(
    nid: str,
    *,
    cpus: int = 4 * CPU,
    mem: int = 8 * GB,
    generic: tuple[GenericResource, ...] = (),
    labels: dict[str, str] | None = None,
    engine_labels: dict[str, str] | None = None,
    state: str = "ready",
    availability: str = "active",
    role: str = "worker",
    hostname: str | None = None,
    os: str = "linux",
    arch: str = "x86_64",
    addr: str = "10.0.0.1",
) -> Node:
    return Node(
        id=nid,
        spec=NodeSpec(annotations=Annotations(labels=labels or {}), role=role, availability=availability),
        description=NodeDescription(
            hostname=hostname if hostname is not None else f"host-{nid}",
            platform=Platform(architecture=arch, os=os),
            resources=Resources(nano_cpus=cpus, memory_bytes=mem, generic=generic),
            engine=EngineDescription(labels=engine_labels or {}),
        ),
        status=NodeStatus(state=state, addr=addr),
    )


def mktask(
    tid: str,
    *,
    service: str = "svc",
    version: int = 1,
    cpus: int = 0,
    mem: int = 0,
    generic: tuple[GenericResource, ...] = (),
    constraints: tuple[str, ...] = (),
    preferences: tuple[str, ...] = (),
    max_replicas: int = 0,
    platforms: tuple[Platform, ...] = (),
    host_ports: tuple[int, ...] = (),
    strategy: str | None = None,
    node_id: str = "",
    state: TaskState = TaskState.PENDING,
    desired: TaskState = TaskState.RUNNING,
) -> Task:
    res = None
    if cpus or mem or generic:
        res = ResourceRequirements(reservations=Resources(nano_cpus=cpus, memory_bytes=mem, generic=generic))
    placement = None
    if constraints or preferences or max_replicas or platforms:
        placement = Placement(constraints=constraints, preferences=preferences, max_replicas=max_replicas,
                              platforms=platforms)
    endpoint = None
    if host_ports:
        endpoint = Endpoint(ports=tuple(PortConfig(protocol="tcp", target_port=80, published_port=p,
                                                   publish_mode="host") for p in host_ports))
    return Task(
        id=tid,
        service_id=service,
        spec_version=version,
        spec=TaskSpec(resources=res, placement=placement),
        service_annotations=Annotations(labels={STRATEGY_LABEL: strategy} if strategy else {}),
        node_id=node_id,
        status=TaskStatus(state=state),
        desired_state=desired,
        endpoint=endpoint,
    )


def tasks(n: int, prefix: str = "t", **kw: object) -> list[Task]:
    return [mktask(f"{prefix}{i:05d}", **kw) for i in range(n)]  # type: ignore[arg-type]


def sched(*nodes: Node, strategy: str = "spread", seed: int = 0) -> Scheduler:
    s = Scheduler(random.Random(seed), default_strategy=strategy)
    for n in nodes:
        s.upsert_node(n)
    return s


def placements(decisions: list[Decision]) -> Counter[str | None]:
    return Counter(d.node_id for d in decisions)


def assigned(t: Task, node_id: str) -> Task:
    return replace(t, node_id=node_id, status=TaskStatus(state=TaskState.ASSIGNED))


# --- constraints -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "node", "expected"),
    [
        ("node.id==n1", mknode("n1"), True),
        ("node.id==N1", mknode("n1"), True),  # values compare case-insensitively
        ("node.id!=n1", mknode("n1"), False),
        ("node.hostname==Web-1", mknode("n1", hostname="web-1"), True),
        ("node.hostname!=web-1", mknode("n1", hostname="web-2"), True),
        ("node.role==manager", mknode("n1", role="manager"), True),
        ("node.role==MANAGER", mknode("n1", role="manager"), True),
        ("node.role==manager", mknode("n1"), False),
        ("node.role != manager", mknode("n1"), True),
        ("node.platform.os==Linux", mknode("n1"), True),
        ("node.platform.os==windows", mknode("n1"), False),
        ("node.platform.arch==X86_64", mknode("n1"), True),
        ("node.labels.zone==a", mknode("n1", labels={"zone": "a"}), True),
        ("node.labels.zone==a", mknode("n1", labels={"zone": "b"}), False),
        ("node.labels.zone==a", mknode("n1"), False),  # missing label compares as ""
        ("node.labels.zone!=a", mknode("n1"), True),
        ("node.labels.Zone==a", mknode("n1", labels={"zone": "a"}), False),  # label names are case-sensitive
        ("NODE.LABELS.zone==a", mknode("n1", labels={"zone": "a"}), True),  # prefixes are not
        ("engine.labels.disk==ssd", mknode("n1", engine_labels={"disk": "ssd"}), True),
        ("engine.labels.disk==ssd", mknode("n1"), False),
        ("engine.labels.disk!=ssd", mknode("n1", engine_labels={"disk": "hdd"}), True),
        ("node.ip==10.0.0.1", mknode("n1"), True),
        ("node.ip!=10.0.0.1", mknode("n1"), False),
        ("node.ip==10.0.0.0/24", mknode("n1"), True),
        ("node.ip==10.0.1.0/24", mknode("n1"), False),
        ("node.ip!=10.0.1.0/24", mknode("n1"), True),
        ("node.ip==nonsense", mknode("n1"), False),
        ("node.ip!=nonsense", mknode("n1"), False),  # malformed address rejects every node
        ("node.foo==bar", mknode("n1"), False),  # unknown keys parse but never match
        ("node.foo!=bar", mknode("n1"), False),
        ("  node.id  ==  n1  ", mknode("n1"), True),
    ],
)
def test_constraint_matching(expr: str, node: Node, expected: bool) -> None:
    (c,) = parse_constraints([expr])
    assert c.matches(node) is expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("node.id", "constraint expected one operator from ==, !="),
        ("node.id=n1", "constraint expected one operator from ==, !="),
        ("node.id>=n1", "constraint expected one operator from ==, !="),
        ("node.id>!=n1", "key 'node.id>' is invalid"),
        ("==n1", "key '' is invalid"),
        ("1node==x", "key '1node' is invalid"),
        ("node.labels.a==b==c", "value 'b==c' is invalid"),
        ("node.id==", "value '' is invalid"),
        ("node.id==a<b", "value 'a<b' is invalid"),
    ],
)
def test_constraint_parse_errors(expr: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_constraints(["node.role==worker", expr])
    assert e.value.message == message


def test_constraint_values_allow_regex_like_characters() -> None:
    (c,) = parse_constraints(["node.labels.path==/srv/data-1:x.*"])
    assert c.value == "/srv/data-1:x.*"
    assert c.matches(mknode("n1", labels={"path": "/srv/data-1:x.*"}))


# --- filters -----------------------------------------------------------------------------------------


def test_ready_filter() -> None:
    f = ReadyFilter()
    assert f.set_task(mktask("t"))
    assert f.check(NodeInfo(mknode("a")))
    assert not f.check(NodeInfo(mknode("b", state="down")))
    assert not f.check(NodeInfo(mknode("c", availability="drain")))
    assert not f.check(NodeInfo(mknode("d", availability="pause")))
    assert f.explain(1) == "1 node not available for new tasks"
    assert f.explain(3) == "3 nodes not available for new tasks"


def test_resource_filter() -> None:
    f = ResourceFilter()
    assert not f.set_task(mktask("t"))
    assert f.set_task(mktask("t", cpus=2 * CPU, mem=GB))
    ni = NodeInfo(mknode("a", cpus=3 * CPU, mem=2 * GB))
    assert f.check(ni)
    ni.add_task(assigned(mktask("x", cpus=2 * CPU), "a"))
    assert not f.check(ni)
    assert f.set_task(mktask("t", mem=3 * GB))
    assert not f.check(NodeInfo(mknode("b", mem=2 * GB)))
    assert f.explain(1) == "insufficient resources on 1 node"
    assert f.explain(2) == "insufficient resources on 2 nodes"


def test_resource_filter_generic() -> None:
    f = ResourceFilter()
    gpus = tuple(GenericResource(kind="gpu", named=f"GPU-{i}") for i in range(2))
    ssd = (GenericResource(kind="ssd", value=3),)
    ni = NodeInfo(mknode("a", generic=gpus + ssd))
    assert f.set_task(mktask("t", generic=(GenericResource(kind="gpu", value=2),)))
    assert f.check(ni)
    assert f.set_task(mktask("t", generic=(GenericResource(kind="gpu", value=3),)))
    assert not f.check(ni)
    assert f.set_task(mktask("t", generic=(GenericResource(kind="ssd", value=3),)))
    assert f.check(ni)
    assert f.set_task(mktask("t", generic=(GenericResource(kind="fpga", value=1),)))
    assert not f.check(ni)


def test_constraint_filter() -> None:
    f = ConstraintFilter()
    assert not f.set_task(mktask("t"))
    assert not f.set_task(mktask("t", constraints=("garbage",)))  # invalid: filter disabled
    assert f.set_task(mktask("t", constraints=("node.labels.zone==a", "node.role==worker")))
    assert f.check(NodeInfo(mknode("a", labels={"zone": "a"})))
    assert not f.check(NodeInfo(mknode("b", labels={"zone": "a"}, role="manager")))
    assert f.explain(1) == "scheduling constraints not satisfied on 1 node"
    assert f.explain(4) == "scheduling constraints not satisfied on 4 nodes"


def test_platform_filter() -> None:
    f = PlatformFilter()
    assert not f.set_task(mktask("t"))
    assert f.set_task(mktask("t", platforms=(Platform(architecture="amd64", os="linux"),)))
    assert f.check(NodeInfo(mknode("a", arch="x86_64")))  # x86_64 is amd64
    assert not f.check(NodeInfo(mknode("b", arch="aarch64")))
    assert f.set_task(mktask("t", platforms=(Platform(os="windows"), Platform(architecture="arm64"))))
    assert f.check(NodeInfo(mknode("b", arch="aarch64")))
    assert not f.check(NodeInfo(mknode("a", arch="x86_64")))
    assert f.explain(1) == "unsupported platform on 1 node"
    assert f.explain(2) == "unsupported platform on 2 nodes"


def test_host_port_filter() -> None:
    f = HostPortFilter()
    assert not f.set_task(mktask("t"))
    ingress = replace(mktask("t"), endpoint=Endpoint(ports=(PortConfig(published_port=80),)))
    assert not f.set_task(ingress)
    assert f.set_task(mktask("t", host_ports=(8080,)))
    ni = NodeInfo(mknode("a"))
    assert f.check(ni)
    ni.add_task(assigned(mktask("x", host_ports=(8080,)), "a"))
    assert not f.check(ni)
    ni.remove_task(mktask("x"))
    assert f.check(ni)
    assert f.explain(1) == "host-mode port already in use on 1 node"
    assert f.explain(5) == "host-mode port already in use on 5 nodes"


def test_max_replicas_filter() -> None:
    f = MaxReplicasFilter()
    assert not f.set_task(mktask("t"))
    assert f.set_task(mktask("t", max_replicas=1))
    ni = NodeInfo(mknode("a"))
    assert f.check(ni)
    ni.add_task(assigned(mktask("x"), "a"))
    assert not f.check(ni)
    ni.add_task(assigned(mktask("y", service="other"), "a"))
    assert f.set_task(mktask("t", service="other", max_replicas=2))
    assert f.check(ni)
    assert f.explain(1) == f.explain(7) == "max replicas per node limit exceed"


# --- pipeline ----------------------------------------------------------------------------------------


def test_pipeline_explain_sorted_by_failures() -> None:
    p = Pipeline()
    p.set_task(mktask("t", cpus=8 * CPU, constraints=("node.labels.zone==a",)))
    nodes = [
        NodeInfo(mknode("a", state="down")),
        NodeInfo(mknode("b", labels={"zone": "a"})),  # too small
        NodeInfo(mknode("c", labels={"zone": "b"}, cpus=16 * CPU)),
        NodeInfo(mknode("d", labels={"zone": "b"}, cpus=16 * CPU)),
        NodeInfo(mknode("e", labels={"zone": "a"})),
        NodeInfo(mknode("f", cpus=16 * CPU)),
    ]
    assert not any(p.process(n) for n in nodes)
    assert p.explain() == (
        "no suitable node (scheduling constraints not satisfied on 3 nodes; "
        "insufficient resources on 2 nodes; 1 node not available for new tasks)"
    )
    p.set_task(mktask("t"))
    assert p.explain() == "no suitable node"


def test_pipeline_explain_ties_keep_filter_order() -> None:
    p = Pipeline()
    p.set_task(mktask("t", cpus=8 * CPU, constraints=("node.labels.zone==a",)))
    for n in [mknode("a", labels={"zone": "a"}), mknode("b", labels={"zone": "b"}, cpus=16 * CPU)]:
        assert not p.process(NodeInfo(n))
    assert p.explain() == (
        "no suitable node (insufficient resources on 1 node; scheduling constraints not satisfied on 1 node)"
    )


# --- nodeinfo ----------------------------------------------------------------------------------------


def test_nodeinfo_accounting_is_idempotent() -> None:
    gpus = tuple(GenericResource(kind="gpu", named=f"GPU-{i}") for i in range(3))
    ssd = GenericResource(kind="ssd", value=5)
    ni = NodeInfo(mknode("a", cpus=4 * CPU, mem=8 * GB, generic=(*gpus, ssd)))
    t = assigned(mktask("t", cpus=CPU, mem=GB, generic=(GenericResource(kind="gpu", value=2),
                                                        GenericResource(kind="ssd", value=2)),
                        host_ports=(9000,)), "a")
    assert ni.add_task(t)
    assert not ni.add_task(t)
    assert (ni.avail_cpus, ni.avail_memory) == (3 * CPU, 7 * GB)
    assert ni.avail_discrete == {"ssd": 3}
    assert ni.avail_named == {"gpu": ["GPU-2"]}
    assert ni.assigned_generic("t") == (GenericResource(kind="gpu", named="GPU-0"),
                                        GenericResource(kind="gpu", named="GPU-1"))
    assert ni.used_ports == {("tcp", 9000): 1}
    assert (ni.active_count, ni.active_by_service) == (1, {"svc": 1})
    assert ni.available == Resources(nano_cpus=3 * CPU, memory_bytes=7 * GB, generic=(
        GenericResource(kind="ssd", value=3), GenericResource(kind="gpu", named="GPU-2")))

    # desired shutdown but still running: stops counting, keeps its resources
    assert ni.add_task(replace(t, desired_state=TaskState.SHUTDOWN))
    assert (ni.active_count, ni.active_by_service, ni.avail_cpus) == (0, {}, 3 * CPU)
    # reported finished: everything is released
    assert ni.add_task(replace(t, status=TaskStatus(state=TaskState.SHUTDOWN)))
    assert not ni.remove_task(t)
    assert (ni.avail_cpus, ni.avail_memory, ni.used_ports) == (4 * CPU, 8 * GB, {})
    assert ni.avail_named == {"gpu": ["GPU-0", "GPU-1", "GPU-2"]}
    assert ni.avail_discrete == {"ssd": 5}


def test_nodeinfo_ignores_tasks_not_held_here() -> None:
    ni = NodeInfo(mknode("a"))
    assert not ni.add_task(assigned(mktask("t"), "b"))
    assert not ni.add_task(mktask("t", node_id="a"))  # pre-assigned but still pending
    assert not ni.add_task(replace(assigned(mktask("t"), "a"), status=TaskStatus(state=TaskState.FAILED)))
    assert ni.active_count == 0


def test_nodeinfo_node_update_recomputes() -> None:
    ni = NodeInfo(mknode("a", cpus=4 * CPU))
    ni.add_task(assigned(mktask("t", cpus=CPU), "a"))
    ni.set_node(mknode("a", cpus=2 * CPU))
    assert ni.avail_cpus == CPU


def test_recent_failures_window() -> None:
    ni = NodeInfo(mknode("a"))
    for i in range(3):
        ni.task_failed("svc", 1, 100.0 + i)
    assert ni.recent_failures("svc", 1, 150.0) == 3
    assert ni.recent_failures("svc", 2, 150.0) == 0
    assert ni.recent_failures("svc", 1, 101.0 + 300.0) == 2
    assert ni.recent_failures("svc", 1, 1000.0) == 0


# --- scheduling: spread ------------------------------------------------------------------------------


def test_spread_evenly() -> None:
    s = sched(*(mknode(f"n{i}") for i in range(3)))
    d = s.schedule(tasks(7), now=0)
    assert all(x.message == ASSIGNED_MESSAGE for x in d)
    assert placements(d) == {"n0": 3, "n1": 2, "n2": 2}
    assert [x.node_id for x in d[:3]] == ["n0", "n1", "n2"]


def test_spread_accounts_for_existing_tasks() -> None:
    s = sched(mknode("a"), mknode("b"), mknode("c"))
    for i in range(3):
        s.add_task(assigned(mktask(f"old{i}"), "a"))
    s.add_task(assigned(mktask("other", service="x"), "b"))
    d = s.schedule(tasks(4), now=0)
    # b and c have no task of this service; c wins ties because it has fewer tasks in total
    assert [x.node_id for x in d] == ["c", "b", "c", "b"]
    assert s.nodes["a"].active_by_service["svc"] == 3
    assert s.nodes["b"].active_by_service["svc"] == 2


def test_spread_avoids_nodes_with_recent_failures() -> None:
    s = sched(mknode("a"), mknode("b"))
    for i in range(MAX_FAILURES):
        t = assigned(mktask(f"f{i}"), "a")
        s.add_task(t)
        s.add_task(replace(t, status=TaskStatus(state=TaskState.FAILED, timestamp=100.0 + i)))
    d = s.schedule(tasks(3), now=200.0)
    assert [x.node_id for x in d] == ["b", "b", "b"]
    # other spec versions and old failures do not count
    assert placements(s.schedule(tasks(2, prefix="v", version=2), now=200.0)) == {"a": 2}
    assert placements(s.schedule(tasks(2, prefix="late"), now=1000.0)) == {"a": 2}


def test_spread_with_one_preference_including_unlabelled_nodes() -> None:
    nodes = [mknode("a1", labels={"zone": "a"}), mknode("a2", labels={"zone": "a"}),
             mknode("b1", labels={"zone": "b"}), mknode("x1"), mknode("x2"), mknode("x3")]
    s = sched(*nodes)
    d = s.schedule(tasks(9, preferences=("node.labels.zone",)), now=0)
    assert placements(d) == {"a1": 2, "a2": 1, "b1": 3, "x1": 1, "x2": 1, "x3": 1}


def test_spread_preference_with_existing_tasks_rebalances() -> None:
    s = sched(mknode("a1", labels={"zone": "a"}), mknode("b1", labels={"zone": "b"}))
    for i in range(4):
        s.add_task(assigned(mktask(f"old{i}"), "a1"))
    d = s.schedule(tasks(6, preferences=("node.labels.zone",)), now=0)
    assert placements(d) == {"b1": 5, "a1": 1}


def test_spread_preference_full_branch_spills_over() -> None:
    s = sched(mknode("a1", labels={"zone": "a"}, cpus=CPU), mknode("b1", labels={"zone": "b"}, cpus=10 * CPU))
    d = s.schedule(tasks(6, cpus=CPU, preferences=("node.labels.zone",)), now=0)
    assert placements(d) == {"a1": 1, "b1": 5}


def test_spread_preference_branch_without_eligible_nodes_keeps_its_share() -> None:
    s = sched(mknode("a1", labels={"zone": "a"}), mknode("b1", labels={"zone": "b"}, state="down"))
    d = s.schedule(tasks(4, preferences=("node.labels.zone",)), now=0)
    assert placements(d) == {"a1": 4}


def test_spread_with_two_preferences() -> None:
    nodes = [
        mknode("dc1-r1-a", labels={"dc": "1", "rack": "1"}),
        mknode("dc1-r1-b", labels={"dc": "1", "rack": "1"}),
        mknode("dc1-r2-a", labels={"dc": "1", "rack": "2"}),
        mknode("dc2-r1-a", labels={"dc": "2", "rack": "1"}),
        mknode("dc2-nr-a", labels={"dc": "2"}),
    ]
    s = sched(*nodes)
    d = s.schedule(tasks(8, preferences=("node.labels.dc", "spread=node.labels.rack")), now=0)
    assert placements(d) == {"dc1-r1-a": 1, "dc1-r1-b": 1, "dc1-r2-a": 2, "dc2-r1-a": 2, "dc2-nr-a": 2}


def test_spread_engine_label_preference() -> None:
    s = sched(mknode("a", engine_labels={"disk": "ssd"}), mknode("b", engine_labels={"disk": "ssd"}),
              mknode("c", engine_labels={"disk": "hdd"}))
    d = s.schedule(tasks(4, preferences=("engine.labels.disk",)), now=0)
    assert placements(d) == {"a": 1, "b": 1, "c": 2}


# --- scheduling: binpack and random ------------------------------------------------------------------


def test_binpack_fills_fullest_node_first() -> None:
    s = sched(mknode("big", cpus=8 * CPU), mknode("small", cpus=4 * CPU), mknode("mid", cpus=6 * CPU),
              strategy="binpack")
    d = s.schedule(tasks(10, cpus=CPU, mem=GB), now=0)
    # least cpu left first: small until full, then mid; big stays empty
    assert placements(d) == {"small": 4, "mid": 6}
    assert [x.node_id for x in d[:4]] == ["small"] * 4


def test_binpack_by_service_label_and_ties_by_most_tasks() -> None:
    s = sched(mknode("a"), mknode("b"))
    s.add_task(assigned(mktask("x", service="other"), "b"))
    d = s.schedule(tasks(3, strategy="binpack"), now=0)
    assert placements(d) == {"b": 3}


def test_unknown_strategy_label_falls_back_to_default() -> None:
    s = sched(mknode("a"), mknode("b"))
    assert placements(s.schedule(tasks(4, strategy="nonsense"), now=0)) == {"a": 2, "b": 2}
    with pytest.raises(ValueError):
        Scheduler(default_strategy="nonsense")


def test_random_is_reproducible_and_covers_nodes() -> None:
    def run(seed: int) -> list[str | None]:
        s = sched(*(mknode(f"n{i}") for i in range(5)), strategy="random", seed=seed)
        return [x.node_id for x in s.schedule(tasks(200), now=0)]

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    assert set(first) == {f"n{i}" for i in range(5)}


def test_random_respects_dynamic_filters() -> None:
    s = sched(mknode("a", cpus=2 * CPU), mknode("b", cpus=CPU), strategy="random", seed=3)
    d = s.schedule(tasks(4, cpus=CPU), now=0)
    assert placements(d) == {"a": 2, "b": 1, None: 1}


# --- pending and recovery ----------------------------------------------------------------------------


def test_pending_with_message_then_placed_after_node_added() -> None:
    s = sched(mknode("a", state="down"), mknode("b", cpus=CPU), mknode("c", cpus=CPU))
    d = s.schedule(tasks(2, cpus=2 * CPU), now=0)
    assert d == [
        Decision("t00000", None, "no suitable node (insufficient resources on 2 nodes; "
                                 "1 node not available for new tasks)"),
        Decision("t00001", None, "no suitable node (insufficient resources on 2 nodes; "
                                 "1 node not available for new tasks)"),
    ]
    s.upsert_node(mknode("d", cpus=4 * CPU))
    assert placements(s.schedule(tasks(2, cpus=2 * CPU), now=0)) == {"d": 2}


def test_pending_until_resources_freed() -> None:
    s = sched(mknode("a", cpus=2 * CPU))
    running = assigned(mktask("r", service="old", cpus=2 * CPU), "a")
    s.add_task(running)
    (d,) = s.schedule([mktask("t", cpus=CPU)], now=0)
    assert d == Decision("t", None, "no suitable node (insufficient resources on 1 node)")
    s.add_task(replace(running, status=TaskStatus(state=TaskState.COMPLETE)))
    assert s.schedule([mktask("t", cpus=CPU)], now=0) == [Decision("t", "a", ASSIGNED_MESSAGE)]


def test_no_nodes() -> None:
    assert Scheduler().schedule([mktask("t")], now=0) == [Decision("t", None, "no suitable node")]


def test_partial_group_placement_explains_the_rest() -> None:
    s = sched(mknode("a", cpus=2 * CPU), mknode("b", cpus=CPU))
    d = s.schedule(tasks(4, cpus=CPU), now=0)
    assert placements(d) == {"a": 2, "b": 1, None: 1}
    assert d[-1] == Decision("t00003", None, "no suitable node (insufficient resources on 2 nodes)")


def test_max_replicas_per_node() -> None:
    s = sched(mknode("a"), mknode("b"))
    d = s.schedule(tasks(5, max_replicas=2), now=0)
    assert placements(d) == {"a": 2, "b": 2, None: 1}
    assert d[-1].message == "no suitable node (max replicas per node limit exceed)"


def test_host_ports_one_task_per_node() -> None:
    s = sched(mknode("a"), mknode("b"), mknode("c", availability="drain"))
    d = s.schedule(tasks(3, host_ports=(8080,)), now=0)
    assert placements(d) == {"a": 1, "b": 1, None: 1}
    assert d[-1].message == ("no suitable node (host-mode port already in use on 2 nodes; "
                             "1 node not available for new tasks)")
    # another port fits again
    assert placements(s.schedule(tasks(2, prefix="u", service="u", host_ports=(8081,)), now=0)) == {
        "a": 1, "b": 1}


def test_generic_resources_are_claimed() -> None:
    gpus = tuple(GenericResource(kind="gpu", named=f"GPU-{i}") for i in range(2))
    s = sched(mknode("a", generic=gpus), mknode("b"))
    d = s.schedule(tasks(3, generic=(GenericResource(kind="gpu", value=1),)), now=0)
    assert placements(d) == {"a": 2, None: 1}
    assert d[-1].message == "no suitable node (insufficient resources on 2 nodes)"
    assert s.nodes["a"].assigned_generic("t00001") == (GenericResource(kind="gpu", named="GPU-1"),)


def test_constraints_restrict_nodes() -> None:
    s = sched(mknode("a", labels={"zone": "a"}), mknode("b", labels={"zone": "b"}), mknode("c"))
    d = s.schedule(tasks(4, constraints=("node.labels.zone!=b",)), now=0)
    assert placements(d) == {"a": 2, "c": 2}
    d = s.schedule(tasks(1, prefix="z", service="z", constraints=("node.labels.zone==q",)), now=0)
    assert d == [
        Decision("z00000", None, "no suitable node (scheduling constraints not satisfied on 3 nodes)")
    ]


def test_constraint_cache_invalidated_on_node_update() -> None:
    s = sched(mknode("a"))
    c = ("node.labels.zone==a",)
    assert s.schedule([mktask("t1", constraints=c)], now=0)[0].node_id is None
    s.upsert_node(mknode("a", labels={"zone": "a"}))
    assert s.schedule([mktask("t1", constraints=c)], now=0)[0].node_id == "a"


def test_preassigned_tasks_checked_on_their_node() -> None:
    s = sched(mknode("a", cpus=CPU), mknode("b", state="down"))
    d = s.schedule([mktask("g1", service="g", node_id="a", cpus=CPU),
                    mktask("g2", service="g", node_id="b"),
                    mktask("g3", service="g", node_id="gone"),
                    mktask("g4", service="g2", node_id="a", cpus=CPU)], now=0)
    assert d == [
        Decision("g1", "a", ASSIGNED_MESSAGE),
        Decision("g2", None, "no suitable node (1 node not available for new tasks)"),
        Decision("g3", None, "no suitable node"),
        Decision("g4", None, "no suitable node (insufficient resources on 1 node)"),
    ]


def test_failed_write_is_undone_with_remove_task() -> None:
    s = sched(mknode("a", cpus=CPU))
    t = mktask("t", cpus=CPU)
    assert s.schedule([t], now=0)[0].node_id == "a"
    assert s.nodes["a"].avail_cpus == 0
    assert s.remove_task(t)
    assert s.nodes["a"].avail_cpus == CPU
    assert not s.remove_task(t)


def test_store_echo_of_placement_does_not_double_count() -> None:
    s = sched(mknode("a", cpus=2 * CPU))
    t = mktask("t", cpus=CPU)
    s.schedule([t], now=0)
    assert not s.add_task(assigned(t, "a"))
    assert s.nodes["a"].avail_cpus == CPU
    assert s.nodes["a"].active_count == 1


def test_rescheduling_a_held_task_releases_it_first() -> None:
    s = sched(mknode("a", cpus=CPU))
    t = mktask("t", cpus=CPU)
    s.schedule([t], now=0)
    assert s.schedule([t], now=0) == [Decision("t", "a", ASSIGNED_MESSAGE)]
    assert s.nodes["a"].avail_cpus == 0


def test_tasks_seen_before_their_node_are_adopted() -> None:
    s = Scheduler()
    s.add_task(assigned(mktask("t", cpus=CPU), "a"))
    s.upsert_node(mknode("a", cpus=2 * CPU))
    assert s.nodes["a"].avail_cpus == CPU
    s.remove_node("a")
    assert "a" not in s.nodes


def test_groups_see_each_others_placements() -> None:
    s = sched(mknode("a", cpus=2 * CPU), mknode("b", cpus=2 * CPU))
    batch = tasks(2, prefix="x", service="x", cpus=2 * CPU) + tasks(1, prefix="y", service="y", cpus=CPU)
    d = s.schedule(batch, now=0)
    assert placements(d) == {"a": 1, "b": 1, None: 1}


# --- properties --------------------------------------------------------------------------------------

_STATES = [TaskState.PENDING, TaskState.ASSIGNED, TaskState.RUNNING, TaskState.FAILED, TaskState.SHUTDOWN]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(_STATES), st.booleans(), st.booleans()),
                max_size=40))
def test_nodeinfo_matches_recomputation(events: list[tuple[int, TaskState, bool, bool]]) -> None:
    gpus = tuple(GenericResource(kind="gpu", named=f"GPU-{i}") for i in range(8))
    ni = NodeInfo(mknode("a", cpus=100 * CPU, generic=gpus))
    for idx, state, desired_run, remove in events:
        t = replace(mktask(f"t{idx}", service=f"s{idx % 2}", cpus=(idx + 1) * CPU,
                           generic=(GenericResource(kind="gpu", value=1),), host_ports=(8000 + idx,)),
                    node_id="a", status=TaskStatus(state=state),
                    desired_state=TaskState.RUNNING if desired_run else TaskState.SHUTDOWN)
        if remove:
            ni.remove_task(t)
        else:
            ni.add_task(t)
    fresh = NodeInfo(mknode("a", cpus=100 * CPU, generic=gpus))
    for t in ni.tasks.values():
        fresh.add_task(t)
    assert ni.avail_cpus == fresh.avail_cpus
    assert ni.used_ports == fresh.used_ports
    assert (ni.active_count, ni.active_by_service) == (fresh.active_count, fresh.active_by_service)
    assert len(ni.avail_named["gpu"]) == 8 - len(ni.tasks)
    claimed = [g.named for tid in ni.tasks for g in ni.assigned_generic(tid)]
    assert sorted(claimed + ni.avail_named["gpu"]) == [g.named for g in gpus]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", ""]), min_size=1, max_size=12), st.integers(1, 60))
def test_spread_preference_is_even_across_zones(zones: list[str], n: int) -> None:
    nodes = [mknode(f"n{i:02d}", labels={"zone": z} if z else {}) for i, z in enumerate(zones)]
    s = sched(*nodes)
    d = s.schedule(tasks(n, preferences=("node.labels.zone",)), now=0)
    assert all(x.node_id for x in d)
    per_zone = Counter(zones[int(x.node_id[1:])] for x in d if x.node_id)
    counts = [per_zone.get(z, 0) for z in set(zones)]
    assert max(counts) - min(counts) <= 1
    # and within a zone, nodes differ by at most one task
    for z in set(zones):
        per_node = [placements(d).get(f"n{i:02d}", 0) for i, zz in enumerate(zones) if zz == z]
        assert max(per_node) - min(per_node) <= 1
