"""Store stages: a leader's loop carries a transaction further before it is committed (MemoryStore.add_stage)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from shoal.clock import SystemClock
from shoal.errors import ShoalError
from shoal.manager.raft.node import NotLeaderError
from shoal.model.objects import Task, TaskStatus
from shoal.model.state import TaskState
from shoal.store.memory import Action, Event, MemoryStore, Tx, decode_entry
from shoal.testing.sim import MemoryProposer


def assigning(log: list[list[Action]], undone: list[str]):  # type: ignore[no-untyped-def]
    """A stage that assigns every task a transaction created PENDING, and remembers what it saw."""

    def stage(tx: Tx, actions: list[Action]):  # type: ignore[no-untyped-def]
        log.append(list(actions))
        placed = []
        for op, kind, t in actions:
            if kind == "task" and op == "create" and t.status.state == TaskState.PENDING:
                tx.update(replace(tx.task(t.id), node_id="n1", status=TaskStatus(state=TaskState.ASSIGNED)),
                          check_version=False)
                placed.append(t.id)
        return (lambda: undone.extend(placed)) if placed else None

    return stage


def pending(tid: str) -> Task:
    return Task(id=tid, service_id="s1", status=TaskStatus(state=TaskState.PENDING))


async def test_a_stage_writes_in_the_transaction_and_each_object_goes_in_once() -> None:
    proposer = MemoryProposer()
    store = MemoryStore(proposer, SystemClock())
    seen: list[list[Action]] = []
    undone: list[str] = []
    store.add_stage(assigning(seen, undone))
    sub = store.watch(kinds=("task",))
    await store.update(lambda tx: [tx.create(pending(f"t{i}")) for i in range(3)])
    assert [[a[2].id for a in actions] for actions in seen] == [["t0", "t1", "t2"]]
    assert all(t.node_id == "n1" and t.status.state == TaskState.ASSIGNED for t in store.view().tasks())
    # one entry, one action per task: its creation, assigned
    _version, actions = decode_entry(proposer.entries[-1])
    assert [(op, obj.id, obj.status.state) for op, _k, obj in actions] == \
        [("create", f"t{i}", TaskState.ASSIGNED) for i in range(3)]
    assert len(orjson.loads(proposer.entries[-1])["actions"]) == 3
    events = [e for e in sub.drain() if isinstance(e, Event)]
    assert [(e.action, e.obj.node_id) for e in events] == [("create", "n1")] * 3
    assert undone == []
    # A transaction that wrote nothing is not shown to the stages.
    await store.update(lambda tx: tx.task("t0"))
    assert len(seen) == 1


async def test_a_stage_that_raises_is_rolled_back_alone() -> None:
    store = MemoryStore(MemoryProposer(), SystemClock())

    def broken(tx: Tx, actions: list[Action]) -> Any:
        tx.update(replace(tx.task("t0"), node_id="n9"), check_version=False)
        raise RuntimeError("stage bug")

    store.add_stage(broken)
    await store.update(lambda tx: tx.create(pending("t0")))
    t = store.view().task("t0")
    assert t is not None and t.node_id == "" and t.status.state == TaskState.PENDING


async def test_what_a_stage_decided_is_taken_back_when_its_transaction_fails() -> None:
    store = MemoryStore(MemoryProposer(), SystemClock())
    undone: list[str] = []
    store.add_stage(assigning([], undone))

    def unencodable(tx: Tx) -> None:
        tx.create(pending("t0"))
        tx.create(replace(pending("t1"), start_after=float("nan")))  # refused by the codec, after the stage

    with pytest.raises(ShoalError):
        await store.update(unencodable)
    assert undone == ["t0", "t1"]
    assert store.view().tasks() == []


class RefusingProposer:
    async def propose(self, entry: bytes) -> int:
        raise NotLeaderError(2)


async def test_what_a_stage_decided_is_taken_back_when_the_entry_is_refused() -> None:
    store = MemoryStore(RefusingProposer(), SystemClock())
    undone: list[str] = []
    remove = store.add_stage(assigning([], undone))
    with pytest.raises(NotLeaderError):
        await store.update(lambda tx: tx.create(pending("t0")))
    assert undone == ["t0"]
    remove()
    with pytest.raises(NotLeaderError):
        await store.update(lambda tx: tx.create(pending("t1")))
    assert undone == ["t0"]  # removed: not run again


async def test_collapse_keeps_removals_and_the_order_of_first_writes() -> None:
    store = MemoryStore(MemoryProposer(), SystemClock())
    await store.update(lambda tx: tx.create(pending("old")))

    def fn(tx: Tx) -> None:
        sp = tx.savepoint()
        tx.create(pending("a"))
        tx.update(replace(tx.task("old"), slot=1), check_version=False)
        tx.update(replace(tx.task("a"), slot=2), check_version=False)
        tx.update(replace(tx.task("old"), slot=3), check_version=False)
        tx.delete("task", "old")
        tx.create(pending("old"))
        tx.collapse(sp)
        assert [(op, t.id, t.slot) for op, _k, t in tx.actions[sp:]] == \
            [("create", "a", 2), ("update", "old", 3), ("remove", "old", 3), ("create", "old", 0)]

    await store.update(fn)
    assert {t.id: t.slot for t in store.view().tasks()} == {"a": 2, "old": 0}
