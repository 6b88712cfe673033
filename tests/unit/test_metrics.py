"""The daemon's metrics: collectors read a store, a Raft member and the API's requests at scrape time."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from shoal.cli import main
from shoal.clock import SystemClock
from shoal.engineapi.engine_client import EngineClient
from shoal.engineapi.proxy import EngineProxy
from shoal.engineapi.server import make_app
from shoal.host.addrs import is_loopback
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.manager import Manager
from shoal.manager.membership import Membership
from shoal.manager.raft.node import RaftNode
from shoal.metrics.daemon import DaemonMetrics, serve_metrics
from shoal.model.objects import (
    Annotations,
    CronStatus,
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
    UpdateStatus,
)
from shoal.model.state import TaskState
from shoal.node import NodeConfig, ShoalNode
from shoal.store.memory import MemoryStore, Tx
from shoal.tasks import cancel_and_wait
from shoal.testing.clock import VirtualClock
from shoal.testing.durable import raft_store
from shoal.testing.sim import memory_store


@dataclass
class Source:
    role: str = "manager"
    is_leader: bool = True
    store: MemoryStore | None = None
    raft: RaftNode | None = None
    membership: Membership | None = None
    manager: Manager | None = None
    agent: Any = None


def node(nid: str, state: str) -> Node:
    return Node(id=nid, description=NodeDescription(hostname=f"host-{nid}", resources=Resources(
        nano_cpus=4 * 10**9, memory_bytes=8 << 30)), status=NodeStatus(state=state))


def task(tid: str, sid: str, nid: str, state: TaskState, slot: int) -> Task:
    # Each reserves half a CPU and 256 MiB.
    spec = TaskSpec(resources=ResourceRequirements(reservations=Resources(nano_cpus=500_000_000,
                                                                         memory_bytes=256 << 20)))
    return Task(id=tid, service_id=sid, node_id=nid, slot=slot, status=TaskStatus(state=state), spec=spec)


def populate(tx: Tx) -> None:
    for n in (node("n1", "ready"), node("n2", "ready"), node("n3", "down")):
        tx.create(n)
    tx.create(Service(id="s1", spec=ServiceSpec(annotations=Annotations(name="web"),
                                                 mode=ServiceMode(replicas=3)),
                      update_status=UpdateStatus(state="paused")))
    tx.create(Service(id="s2", spec=ServiceSpec(annotations=Annotations(name="agent"),
                                                 mode=ServiceMode(kind="global"))))
    tx.create(task("task-a", "s1", "n1", TaskState.RUNNING, 1))
    tx.create(task("task-b", "s1", "n2", TaskState.RUNNING, 2))
    tx.create(task("task-c", "s1", "n3", TaskState.RUNNING, 3))  # on a node that is down: not running
    tx.create(task("task-d", "s1", "n1", TaskState.FAILED, 1))
    tx.create(task("task-e", "s2", "n1", TaskState.RUNNING, 0))
    tx.create(task("task-f", "s1", "", TaskState.PENDING, 4))  # not placed: counted, on no node
    tx.create(Service(id="s3", spec=ServiceSpec(annotations=Annotations(name="backup", labels={
        "swarm.cronjob.enable": "true", "swarm.cronjob.schedule": "@hourly"}), mode=ServiceMode(replicas=0)),
        cron=CronStatus(next_run=1_700_003_600.0, last_run=1_700_000_000.0, iteration=4, skipped=2)))


async def test_cluster_collector_reads_the_store() -> None:
    store = memory_store(SystemClock())
    await store.update(populate)
    reg = DaemonMetrics(Source(store=store)).registry

    def val(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert val("swarm_node_manager") == 1
    assert val("swarm_manager_leader") == 1
    assert (val("swarm_manager_nodes", state="ready"), val("swarm_manager_nodes", state="down"),
            val("swarm_manager_nodes", state="disconnected")) == (2, 1, 0)
    assert (val("swarm_manager_tasks_total", state="running"), val("swarm_manager_tasks_total", state="failed"),
            val("swarm_manager_tasks_total", state="pending"), val("swarm_manager_tasks_total", state="new")) \
        == (4, 1, 1, 0)
    assert val("swarm_manager_services_total") == 3
    assert val("shoal_cron_next_run_timestamp_seconds", service="backup") == 1_700_003_600.0
    assert val("shoal_cron_last_run_timestamp_seconds", service="backup") == 1_700_000_000.0
    assert (val("shoal_cron_runs_total", service="backup"), val("shoal_cron_skipped_ticks_total", service="backup")) \
        == (4, 2)
    assert val("shoal_cron_runs_total", service="web") is None  # no schedule, no series
    assert val("shoal_service_replicas_desired", service="web", mode="replicated") == 3
    assert val("shoal_service_replicas_running", service="web") == 2
    assert val("shoal_service_replicas_desired", service="agent", mode="global") == 1
    assert val("shoal_service_replicas_running", service="agent") == 1
    assert val("shoal_service_update_state", service="web", state="paused") == 1
    assert val("shoal_service_update_state", service="agent", state="none") == 1
    assert val("shoal_service_tasks", service="web", state="failed") == 1
    assert val("shoal_node_tasks", node_id="n1", hostname="host-n1", state="running") == 2
    assert val("shoal_node_tasks", node_id="n1", hostname="host-n1", state="failed") == 1
    assert val("shoal_node_tasks", node_id="n3", hostname="host-n3", state="running") == 1
    assert val("shoal_node_cpus", node_id="n2", hostname="host-n2") == 4
    assert val("shoal_node_memory_bytes", node_id="n2", hostname="host-n2") == 8 << 30
    # n1 holds two running tasks (its failed one holds nothing), n2 one.
    assert val("shoal_node_reserved_cpus", node_id="n1", hostname="host-n1") == 1.0
    assert val("shoal_node_reserved_memory_bytes", node_id="n1", hostname="host-n1") == 512 << 20
    assert val("shoal_node_reserved_cpus", node_id="n2", hostname="host-n2") == 0.5
    assert val("swarm_store_batch_latency_seconds_count") == 1  # one update, one entry
    assert val("shoal_store_transactions_total") == 1
    # Bounded labels: no task ID anywhere.
    text = DaemonMetrics(Source(store=store)).render().decode()
    assert "task-" not in text
    assert val("shoal_raft_term") is None  # no Raft member: no Raft series


async def test_worker_reports_only_its_role() -> None:
    reg = DaemonMetrics(Source(role="worker", is_leader=False)).registry
    names = {m.name for m in reg.collect()}
    assert reg.get_sample_value("swarm_node_manager") == 0
    assert reg.get_sample_value("swarm_manager_leader") == 0
    assert not any(n.startswith(("swarm_manager_nodes", "shoal_service", "shoal_raft_term")) for n in names)


async def test_raft_collector_and_timings(tmp_path: Path) -> None:
    async with raft_store(tmp_path, SystemClock(), snapshot_interval=3) as store:
        raft = store.proposer
        assert isinstance(raft, RaftNode)
        metrics = DaemonMetrics(Source(store=store, raft=raft))
        metrics.watch_manager()
        for i in range(5):
            await store.update(lambda tx, i=i: tx.create(node(f"n{i}", "ready")))
        reg = metrics.registry

        def val(name: str) -> float | None:
            return reg.get_sample_value(name)

        assert val("shoal_raft_term") == raft.core.term >= 1
        assert val("shoal_raft_commit_index") == val("shoal_raft_applied_index") == raft.core.applied
        assert val("shoal_raft_apply_lag") == 0
        assert val("shoal_raft_has_leader") == 1
        assert (val("shoal_raft_voters"), val("shoal_raft_quorum")) == (1, 1)
        assert val("shoal_raft_elections_total") == 1  # the sole voter campaigned once at start
        assert val("shoal_raft_leader_changes_total") == 1
        taken = val("shoal_raft_snapshots_taken_total")
        assert taken is not None and taken >= 1
        snap_bytes = val("shoal_raft_snapshot_bytes")
        assert snap_bytes is not None and snap_bytes > 0
        assert val("shoal_raft_snapshot_index") == raft.core.snapshot_meta.index > 0
        assert val("swarm_raft_transaction_latency_seconds_count") == 5
        assert val("swarm_raft_snapshot_latency_seconds_count") == taken
        assert val("swarm_store_batch_latency_seconds_count") == 5


async def test_scheduling_delay_is_creation_to_first_running_report() -> None:
    clock = VirtualClock()
    store = memory_store(clock)
    await store.update(lambda tx: (tx.create(node("n1", "ready")),
                                   tx.create(task("t1", "s1", "n1", TaskState.ASSIGNED, 1))))
    metrics = DaemonMetrics(Source(store=store))
    dispatcher = Dispatcher(store, clock)
    dispatcher.on_scheduling_delay = metrics.scheduling_delay.observe
    running = asyncio.create_task(dispatcher.run())
    try:
        await clock.advance(7.0)
        await dispatcher.update_task_status("n1", [("t1", TaskStatus(state=TaskState.STARTING))])
        await dispatcher.update_task_status("n1", [("t1", TaskStatus(state=TaskState.RUNNING))])
        await dispatcher.update_task_status("n1", [("t1", TaskStatus(state=TaskState.RUNNING, message="again"))])
    finally:
        await cancel_and_wait(running)
    reg = metrics.registry
    assert reg.get_sample_value("swarm_dispatcher_scheduling_delay_seconds_count") == 1  # the first report only
    assert reg.get_sample_value("swarm_dispatcher_scheduling_delay_seconds_sum") == 7.0
    assert reg.get_sample_value("swarm_dispatcher_scheduling_delay_seconds_bucket", {"le": "5.0"}) == 0
    assert reg.get_sample_value("swarm_dispatcher_scheduling_delay_seconds_bucket", {"le": "10.0"}) == 1


async def test_api_requests_are_labelled_by_route_pattern(tmp_path: Path) -> None:
    shoal = ShoalNode(NodeConfig(data_dir=tmp_path), SystemClock(), random.Random(1))  # not in a swarm
    metrics = DaemonMetrics(shoal)
    app = make_app(shoal, EngineProxy(None), EngineClient(None), metrics.observe_request)
    async with TestServer(app) as server, aiohttp.ClientSession() as client:
        for path in ("/v1.41/version", "/version", "/services/abc123", "/services/def456", "/nowhere"):
            async with client.get(server.make_url(path)) as r:
                await r.read()
    reg = metrics.registry

    def count(route: str, status: str) -> float | None:
        return reg.get_sample_value("shoal_engine_api_request_duration_seconds_count",
                                    {"method": "GET", "route": route, "status": status})

    assert count("/version", "200") == 2
    assert count("/services/{id}", "503") == 2  # not a manager; one series for both IDs
    assert count("unmatched", "404") == 1
    assert "abc123" not in metrics.render().decode()


async def test_metrics_endpoint_serves_the_text_format() -> None:
    store = memory_store(SystemClock())
    await store.update(populate)
    metrics = DaemonMetrics(Source(store=store))
    runner = await serve_metrics(metrics, "127.0.0.1", 0)
    try:
        sock = runner.addresses[0]
        async with aiohttp.ClientSession() as client, \
                client.get(f"http://127.0.0.1:{sock[1]}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    finally:
        await runner.cleanup()
    running = {s.labels["service"]: s.value for s in families["shoal_service_replicas_running"].samples}
    assert running == {"web": 2, "agent": 1, "backup": 0}
    assert families["shoal_build_info"].samples[0].value == 1


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.org")


@pytest.mark.parametrize("addr, needle", [("nope", "expected HOST:PORT"), ("::1:9323", "in brackets")])
def test_malformed_metrics_addr_is_refused_before_anything_starts(tmp_path: Path, addr: str, needle: str) -> None:
    r = CliRunner().invoke(main, ["daemon", "--data-dir", str(tmp_path / "d"), "--api-socket",
                                  str(tmp_path / "s.sock"), "--executor", "process", "--metrics-addr", addr])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "--metrics-addr" in r.output
    assert not (tmp_path / "d").exists()


async def test_serving_off_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    metrics = DaemonMetrics(Source(role="", is_leader=False))
    with caplog.at_level(logging.WARNING, logger="shoal.metrics.daemon"):
        runner = await serve_metrics(metrics, "0.0.0.0", 0)
        await runner.cleanup()
        runner = await serve_metrics(metrics, "127.0.0.1", 0)
        await runner.cleanup()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without authentication on 0.0.0.0" in warnings[0]
