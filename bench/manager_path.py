"""Scheduling throughput through the whole manager path.

One manager's real components on a real store, as the daemon runs them: `create_service` (a store transaction
proposed to a one-voter Raft group, `RaftNode` on `SqliteStorage` with its entries sealed by AES-GCM and fsync'd),
the orchestrator creating the tasks, the allocator, the scheduler runner placing them, and the dispatcher
streaming each node its assignments. M simulated nodes are registered with the
dispatcher and each consumes its assignment stream (no executor), so a task counts as placed once its
node's agent has received it. Measured: from the create call until every task has reached an agent.

Run: python bench/manager_path.py [--quick]. `run(quick)` returns records for bench/run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal import gctune
from shoal.clock import SystemClock
from shoal.manager.keys import DataCipher
from shoal.manager.manager import Manager
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import bootstrap
from shoal.manager.raft.transport import NullTransport
from shoal.model.objects import (
    Annotations,
    Cluster,
    ContainerSpec,
    Node,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    Placement,
    Resources,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from shoal.store.memory import MemoryStore

CONSTRAINT = "node.labels.tier==front"


async def _one(n_tasks: int, n_nodes: int, constrained: bool, services: int,
               profile: cProfile.Profile | None = None) -> tuple[float, float]:
    gctune.tune()  # the daemon's collector settings (shoal/gctune.py), so the path is measured as it runs
    with tempfile.TemporaryDirectory() as d:
        clock = SystemClock()
        storage = SqliteStorage(Path(d), DataCipher(os.urandom(32)))
        bootstrap(storage, [1])
        raft = RaftNode(1, storage, NullTransport(), clock, rng=random.Random(2))
        store = MemoryStore(raft, clock)
        raft.attach(store)
        await raft.start()
        await raft.leader_event.wait()
        rng = random.Random(1)

        def seed(tx):  # type: ignore[no-untyped-def]
            tx.create(Cluster(id="cluster"))
            for i in range(n_nodes):
                tx.create(Node(
                    id=f"node{i:06d}",
                    spec=NodeSpec(annotations=Annotations(labels={"tier": ("front", "mid", "back")[i % 3]})),
                    description=NodeDescription(hostname=f"host{i}",
                                                resources=Resources(nano_cpus=10**12, memory_bytes=1 << 50)),
                    status=NodeStatus(state="ready", addr="127.0.0.1")))

        await store.update(seed)
        # Every node registers at once: the path measured starts after that, so none is deferred.
        mgr = Manager(store, clock, rng, max_registrations=float(n_nodes))
        leader = asyncio.create_task(mgr.run_leader())
        received = 0
        done = asyncio.Event()
        beats: list[asyncio.Task[None]] = []

        async def agent(node_id: str) -> None:
            nonlocal received
            v = store.view()
            node = v.node(node_id)
            assert node is not None
            period = (await mgr.dispatcher.register(node_id, node.description, "127.0.0.1")).period

            async def beat() -> None:  # a long run must not lose its sessions to heartbeat expiry
                while True:
                    await asyncio.sleep(period / 2)
                    await mgr.dispatcher.heartbeat(node_id)

            beats.append(asyncio.create_task(beat()))
            seen: set[str] = set()
            async for msg in mgr.dispatcher.assignments(node_id):
                for t in msg.tasks:
                    if t.id not in seen:
                        seen.add(t.id)
                        received += 1
                if received >= n_tasks:
                    done.set()

        while not mgr.dispatcher.active:  # noqa: ASYNC110 - the leader loops starting; a benchmark's setup
            await asyncio.sleep(0.01)
        agents = [asyncio.create_task(agent(f"node{i:06d}")) for i in range(n_nodes)]
        await asyncio.sleep(0)  # let the sessions open before the clock starts
        while len(mgr.dispatcher.sessions) < n_nodes:  # noqa: ASYNC110 - a benchmark's setup, not a test
            await asyncio.sleep(0.01)
        placement = Placement(constraints=(CONSTRAINT,)) if constrained else None
        per = n_tasks // services
        if profile is not None:
            profile.enable()
        start = time.perf_counter()
        cpu0 = time.process_time()
        for s in range(services):
            await mgr.controlapi.create_service(ServiceSpec(
                annotations=Annotations(name=f"svc{s}"),
                task_template=TaskSpec(container=ContainerSpec(image="busybox"), placement=placement),
                mode=ServiceMode(replicas=per)))
        await done.wait()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        if profile is not None:
            profile.disable()
        for a in (*agents, *beats):
            a.cancel()
        leader.cancel()
        await asyncio.gather(*agents, *beats, leader, return_exceptions=True)
        await raft.stop()
        storage.close()
        return elapsed, cpu


def run(quick: bool) -> list[dict[str, object]]:
    cases = [(1_000, 1_000, False), (10_000, 1_000, False), (10_000, 1_000, True)]
    if not quick:
        cases += [(100_000, 1_000, False), (100_000, 1_000, True), (100_000, 10_000, False)]
    out: list[dict[str, object]] = []
    for n_tasks, n_nodes, constrained in cases:
        services = max(1, n_tasks // 1000)
        elapsed, cpu = asyncio.run(_one(n_tasks, n_nodes, constrained, services))
        case = f"{n_tasks} tasks / {n_nodes} nodes" + (" / 1/3 eligible" if constrained else "")
        rate = n_tasks / elapsed
        print(f"manager path  {case:<40} {rate:>10,.0f} tasks/s  ({elapsed:.2f} s, {cpu:.2f} s CPU, "
              "fsync on, 1 manager: Raft group of one, sealed log)")
        out.append({"benchmark": "scheduler", "case": "manager path: " + case, "metric": "tasks_per_s",
                    "value": round(rate, 1), "unit": "tasks/s"})
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    run(p.parse_args().quick)
