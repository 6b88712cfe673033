"""Histograms fed as things happen: the Raft log's fsync, the scheduler's passes and placements, and the agent's
heartbeat round trips."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

from shoal.agent.agent import HEARTBEAT_BUCKETS, Agent
from shoal.api.dispatch import COMPLETE, Assignments, SessionTerms
from shoal.api.usage import NodeUsage
from shoal.clock import SystemClock
from shoal.errors import Unavailable
from shoal.manager.raft.node import RaftNode
from shoal.metrics.daemon import DaemonMetrics
from shoal.model.objects import NodeDescription, TaskStatus
from shoal.tasks import cancel_and_wait
from shoal.testing.clock import VirtualClock
from shoal.testing.durable import raft_store
from shoal.testing.fakeexec import FakeExecutor
from shoal.testing.sim import SimCluster, service_spec
from tests.unit.test_metrics import Source, node


async def test_fsync_of_each_wal_commit(tmp_path: Path) -> None:
    async with raft_store(tmp_path, SystemClock()) as store:
        raft = store.proposer
        assert isinstance(raft, RaftNode)
        metrics = DaemonMetrics(Source(store=store, raft=raft))
        metrics.watch_manager()
        before = metrics.registry.get_sample_value("shoal_raft_fsync_seconds_count")
        for i in range(3):
            await store.update(lambda tx, i=i: tx.create(node(f"n{i}", "ready")))
        after = metrics.registry.get_sample_value("shoal_raft_fsync_seconds_count")
        assert before is not None and after is not None and after >= before + 3  # at least one per write
        assert (metrics.registry.get_sample_value("shoal_raft_fsync_seconds_sum") or 0) > 0


async def test_scheduler_passes_and_placements() -> None:
    async with SimCluster.started(nodes=2, seed=5) as sim:
        metrics = DaemonMetrics(Source(store=sim.store, manager=sim.manager))
        metrics.watch_manager()
        svc = await sim.create_service(service_spec("web", replicas=3))
        await sim.wait_until(lambda: len(sim.running(svc.id)) == 3, what="three running")
        reg = metrics.registry
        assert reg.get_sample_value("shoal_scheduler_placement_delay_seconds_count") == 3
        passes = reg.get_sample_value("shoal_scheduler_pass_seconds_count")
        assert passes is not None and passes >= 1


class SlowDispatcher:
    """Heartbeats answered after 0.02 s of the clock; the third one refused."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.beats = 0

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        return SessionTerms(1.0)

    async def heartbeat(self, node_id: str, usage: NodeUsage | None = None) -> SessionTerms:
        self.beats += 1
        await self.clock.sleep(0.02)
        if self.beats == 3:
            raise Unavailable("leader gone")
        return SessionTerms(1.0)

    async def assignments(self, node_id: str) -> AsyncIterator[Assignments]:
        yield Assignments(type=COMPLETE)
        await asyncio.Event().wait()

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        pass


async def test_agent_heartbeat_latency_and_failures() -> None:
    clock = VirtualClock()
    async with clock.autojump():
        agent = Agent("n1", FakeExecutor(clock=clock), SlowDispatcher(clock), clock, random.Random(1))
        run = asyncio.create_task(agent.run())
        await clock.sleep(6.0)
        await cancel_and_wait(run)
        await agent.close()
    reg = DaemonMetrics(Source(role="worker", is_leader=False, agent=agent)).registry
    count = reg.get_sample_value("shoal_agent_heartbeat_latency_seconds_count")
    assert count is not None and count >= 3
    assert reg.get_sample_value("shoal_agent_heartbeat_failures_total") == 1
    assert reg.get_sample_value("shoal_agent_heartbeat_latency_seconds_bucket", {"le": "0.01"}) == 0
    assert reg.get_sample_value("shoal_agent_heartbeat_latency_seconds_bucket", {"le": "0.025"}) == count
    assert 0.025 in HEARTBEAT_BUCKETS
