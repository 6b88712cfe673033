"""The scheduler places the tasks a transaction makes PENDING in that transaction (a store stage), and forgets the
placement when the transaction does not commit."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from shoal.clock import SystemClock
from shoal.errors import ShoalError
from shoal.manager.scheduler.runner import SchedulerRunner
from shoal.model.objects import (
    Node,
    NodeDescription,
    NodeStatus,
    ResourceRequirements,
    Resources,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.sim import MemoryProposer

CPU = 10**9


def task(tid: str) -> Task:
    """A task that needs the whole of the node's one CPU."""
    spec = TaskSpec(resources=ResourceRequirements(reservations=Resources(nano_cpus=CPU)))
    return Task(id=tid, service_id="s1", slot=int(tid[1:]), spec=spec,
                status=TaskStatus(state=TaskState.PENDING, message="pending task scheduling"))


async def started() -> tuple[MemoryStore, asyncio.Task[None]]:
    store = MemoryStore(MemoryProposer(), SystemClock())
    await store.update(lambda tx: tx.create(Node(
        id="n1", description=NodeDescription(hostname="n1", resources=Resources(nano_cpus=CPU, memory_bytes=1 << 30)),
        status=NodeStatus(state="ready"))))
    runner = SchedulerRunner(store, SystemClock(), random.Random(1))
    loop = asyncio.create_task(runner.run())
    while not store._stages:  # noqa: ASYNC110 - the runner registers its stage as it starts
        await asyncio.sleep(0)
    return store, loop


async def test_a_task_is_written_once_assigned() -> None:
    store, loop = await started()
    proposer = store.proposer
    assert isinstance(proposer, MemoryProposer)
    before = len(proposer.entries)
    await store.update(lambda tx: tx.create(task("t1")))
    assert len(proposer.entries) == before + 1
    t = store.view().task("t1")
    assert t is not None and t.node_id == "n1" and t.status.state == TaskState.ASSIGNED
    loop.cancel()


async def test_a_placement_whose_transaction_fails_is_forgotten() -> None:
    store, loop = await started()

    def fails(tx: Tx) -> None:
        tx.create(task("t1"))  # placed on n1 by the stage, taking its CPU...
        tx.create(replace(task("t2"), start_after=float("nan")))  # ...then the codec refuses the transaction

    with pytest.raises(ShoalError):
        await store.update(fails)
    assert store.view().tasks() == []
    # Had the scheduler kept the first placement, n1 would look full and this task would wait.
    await store.update(lambda tx: tx.create(task("t3")))
    t = store.view().task("t3")
    assert t is not None and t.node_id == "n1" and t.status.state == TaskState.ASSIGNED
    loop.cancel()
