from __future__ import annotations

import asyncio
import traceback
from dataclasses import replace
from pathlib import Path

import pytest

from shoal.clock import SystemClock
from shoal.errors import Conflict, SequenceConflict
from shoal.manager.raft.node import NotLeaderError
from shoal.model.objects import Annotations, Service, ServiceSpec, Task
from shoal.store.memory import Commit, Event, MemoryStore, WatchOverflow
from shoal.testing.durable import raft_store
from shoal.testing.sim import MemoryProposer, memory_store


def svc(sid: str, name: str) -> Service:
    return Service(id=sid, spec=ServiceSpec(annotations=Annotations(name=name)))


async def test_create_update_conflicts() -> None:
    store = memory_store(SystemClock())
    created = await store.update(lambda tx: tx.create(svc("s1", "web")))
    assert created.meta.version == 1
    with pytest.raises(Conflict):
        await store.update(lambda tx: tx.create(svc("s2", "WEB")))  # names are case-insensitive
    renamed = replace(created, spec=ServiceSpec(annotations=Annotations(name="api")))
    await store.update(lambda tx: tx.update(renamed))
    with pytest.raises(SequenceConflict):  # built on version 1, store is at 2
        await store.update(lambda tx: tx.update(renamed))
    assert store.view().by_name("service", "web") is None
    assert store.view().by_name("service", "api").id == "s1"


async def test_failed_transaction_changes_nothing() -> None:
    store = memory_store(SystemClock())

    def boom(tx):  # type: ignore[no-untyped-def]
        tx.create(svc("s1", "web"))
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await store.update(boom)
    assert store.view().all("service") == []
    assert store.version == 0


async def test_tx_reads_its_own_writes_and_indexes() -> None:
    store = memory_store(SystemClock())

    def fn(tx):  # type: ignore[no-untyped-def]
        tx.create(svc("s1", "web"))
        tx.create(Task(id="t1", service_id="s1", node_id="n1"))
        tx.create(Task(id="t2", service_id="s1"))
        assert {t.id for t in tx.tasks(service_id="s1")} == {"t1", "t2"}
        assert [t.id for t in tx.tasks(node_id="n1")] == ["t1"]
        tx.delete("task", "t2")
        assert [t.id for t in tx.tasks(service_id="s1")] == ["t1"]
        assert tx.by_name("service", "web") is not None

    await store.update(fn)
    assert [t.id for t in store.view().tasks(service_id="s1")] == ["t1"]
    assert [t.id for t in store.view().tasks(node_id="n1")] == ["t1"]


async def test_restart_replays_log_and_snapshot(tmp_path: Path) -> None:
    async with raft_store(tmp_path, SystemClock(), snapshot_interval=3) as store:
        for i in range(7):
            await store.update(lambda tx, i=i: tx.create(svc(f"s{i}", f"n{i}")))
        await store.update(lambda tx: tx.delete("service", "s0"))
        assert list((tmp_path / "snapshots").glob("snap-*"))  # a snapshot was taken
        version = store.version
    async with raft_store(tmp_path, SystemClock(), snapshot_interval=3) as again:
        assert sorted(s.id for s in again.view().services()) == [f"s{i}" for i in range(1, 7)]
        assert again.version == version
        # and it keeps going from where it was
        created = await again.update(lambda tx: tx.create(svc("s9", "n9")))
        assert created.meta.version == version + 1


async def test_watch_gets_events_then_commit() -> None:
    store = memory_store(SystemClock())
    sub = store.watch(kinds=["service"])
    await store.update(lambda tx: (tx.create(svc("s1", "a")), tx.create(Task(id="t", service_id="s1"))))
    first = await asyncio.wait_for(sub.get(), 1)
    second = await asyncio.wait_for(sub.get(), 1)
    assert isinstance(first, Event) and first.kind == "service" and first.action == "create"
    assert isinstance(second, Commit) and second.version == 1


async def test_slow_watcher_is_closed_not_blocking() -> None:
    store: MemoryStore = memory_store(SystemClock())
    sub = store.watch(limit=3)
    for i in range(3):
        await store.update(lambda tx, i=i: tx.create(svc(f"s{i}", f"n{i}")))
    assert sub.closed
    with pytest.raises(WatchOverflow):
        while True:
            await sub.get()


class GatedProposer:
    """Commits when the test says so, counting entries: lets transactions pile up behind one in flight."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.gate = asyncio.Event()

    async def propose(self, entry: bytes) -> int:
        await self.gate.wait()
        self.entries.append(entry)
        return len(self.entries)


async def test_group_commit_batches_waiting_transactions_into_one_entry() -> None:
    prop = GatedProposer()
    store = MemoryStore(prop, SystemClock())
    first = asyncio.ensure_future(store.update(lambda tx: tx.create(svc("s0", "zero"))))
    await asyncio.sleep(0)  # the first entry is now in flight, held at the gate
    seen: list[int] = []

    def create(i: int):  # type: ignore[no-untyped-def]
        def fn(tx):  # type: ignore[no-untyped-def]
            seen.append(len(tx.services()))  # each one sees those before it in the batch
            return tx.create(svc(f"s{i}", f"n{i}"))
        return fn

    def boom(tx):  # type: ignore[no-untyped-def]
        tx.create(svc("bad", "bad"))
        raise ValueError("this one fails alone")

    stale = store.view()  # s0 is not committed yet: a client's read from before
    rest = [asyncio.ensure_future(store.update(create(i))) for i in (1, 2)]
    failing = asyncio.ensure_future(store.update(boom))
    rest.append(asyncio.ensure_future(store.update(create(3))))
    await asyncio.sleep(0)
    prop.gate.set()
    await first
    results = await asyncio.gather(*rest)
    with pytest.raises(ValueError, match="fails alone"):
        await failing
    assert len(prop.entries) == 2  # s0, then s1..s3 in one entry
    assert seen == [1, 2, 3]
    assert [r.id for r in results] == ["s1", "s2", "s3"]
    assert {r.meta.version for r in results} == {2}  # one version per entry
    assert sorted(s.id for s in store.view().services()) == ["s0", "s1", "s2", "s3"]
    assert stale.service("bad") is None and store.view().service("bad") is None


async def test_a_stale_update_in_the_same_batch_conflicts() -> None:
    prop = GatedProposer()
    prop.gate.set()
    store = MemoryStore(prop, SystemClock())
    base = await store.update(lambda tx: tx.create(svc("s1", "web")))
    prop.gate.clear()
    blocker = asyncio.ensure_future(store.update(lambda tx: tx.create(svc("s9", "other"))))
    await asyncio.sleep(0)
    a = asyncio.ensure_future(store.update(lambda tx: tx.update(replace(base, spec=ServiceSpec(
        annotations=Annotations(name="api"))))))
    b = asyncio.ensure_future(store.update(lambda tx: tx.update(replace(base, spec=ServiceSpec(
        annotations=Annotations(name="svc"))))))
    await asyncio.sleep(0)
    prop.gate.set()
    await blocker
    assert (await a).spec.annotations.name == "api"
    with pytest.raises(SequenceConflict):  # built on the version `a` replaced within the same entry
        await b


class FailingProposer:
    """Refuses every entry the way a manager that just lost leadership does."""

    async def propose(self, entry: bytes) -> int:
        raise NotLeaderError(3)


async def test_each_transaction_of_a_refused_batch_gets_its_own_error() -> None:
    # One instance shared by every waiter collected each raiser's frames in one traceback (and kept them,
    # with their locals, alive in reference cycles): each caller gets its own copy of the error instead.
    store = MemoryStore(FailingProposer(), SystemClock())
    caught: dict[str, BaseException] = {}

    async def writer_a() -> None:
        try:
            await store.update(lambda tx: tx.create(svc("a", "a")))
        except NotLeaderError as e:
            caught["a"] = e

    async def writer_b() -> None:
        try:
            await store.update(lambda tx: tx.create(svc("b", "b")))
        except NotLeaderError as e:
            caught["b"] = e

    await asyncio.gather(writer_a(), writer_b())  # queued together: one entry, refused once
    a, b = caught["a"], caught["b"]
    assert a is not b
    assert str(a) == str(b) == "this node is not the swarm leader (the leader is manager 3)"
    assert isinstance(a, NotLeaderError) and a.leader == 3 and isinstance(b, NotLeaderError) and b.leader == 3
    frames_a = {f.f_code.co_name for f, _ in traceback.walk_tb(a.__traceback__)}
    assert "writer_a" in frames_a and "writer_b" not in frames_a
    assert store.view().service("a") is None and store.view().service("b") is None


def renamed(s: Service, name: str) -> Service:
    return replace(s, spec=ServiceSpec(annotations=Annotations(name=name)))


async def test_tx_names_follow_creates_renames_and_removals_within_the_transaction() -> None:
    store = memory_store(SystemClock())
    await store.update(lambda tx: (tx.create(svc("c1", "old")), tx.create(svc("c2", "kept"))))

    def fn(tx):  # type: ignore[no-untyped-def]
        a = tx.create(svc("a", "Alpha"))
        with pytest.raises(Conflict):
            tx.create(svc("a2", "ALPHA"))  # a name staged in this transaction, case-insensitively
        with pytest.raises(Conflict):
            tx.create(svc("k", "KEPT"))  # a committed name
        assert tx.by_name("service", "alpha").id == "a"
        # a staged object renamed: its old name is free, its new one taken
        a = tx.update(renamed(a, "beta"))
        assert tx.by_name("service", "alpha") is None and tx.by_name("service", "BETA").id == "a"
        tx.create(svc("a3", "alpha"))
        with pytest.raises(Conflict):
            tx.create(svc("b2", "Beta"))
        # a committed object renamed: likewise
        tx.update(renamed(tx.get("service", "c1"), "new"))
        assert tx.by_name("service", "old") is None and tx.by_name("service", "new").id == "c1"
        tx.create(svc("o", "OLD"))
        # removed then created again under the same name, then removed again
        tx.delete("service", "c2")
        assert tx.by_name("service", "kept") is None
        tx.create(svc("k2", "kept"))
        assert tx.by_name("service", "Kept").id == "k2"
        tx.delete("service", "k2")
        assert tx.by_name("service", "kept") is None
        # a name moved from one staged object to another
        tx.update(renamed(tx.get("service", "a3"), "gamma"))
        tx.update(renamed(tx.get("service", "o"), "alpha"))
        assert tx.by_name("service", "alpha").id == "o" and tx.by_name("service", "gamma").id == "a3"
        assert tx.by_name("service", "old") is None

    await store.update(fn)
    names = {s.spec.annotations.name: s.id for s in store.view().services()}
    assert names == {"beta": "a", "new": "c1", "gamma": "a3", "alpha": "o"}
    assert store.view().by_name("service", "KEPT") is None


async def test_tx_rollback_takes_back_the_names_staged_after_the_savepoint() -> None:
    store = memory_store(SystemClock())
    await store.update(lambda tx: tx.create(svc("c1", "committed")))

    def fn(tx):  # type: ignore[no-untyped-def]
        a = tx.create(svc("a", "alpha"))
        sp = tx.savepoint()
        tx.create(svc("b", "beta"))
        tx.update(renamed(a, "renamed"))
        tx.update(renamed(tx.get("service", "c1"), "moved"))
        tx.delete("service", "a")
        tx.create(svc("a2", "alpha"))
        tx.rollback(sp)
        assert tx.by_name("service", "beta") is None
        assert tx.by_name("service", "alpha").id == "a"
        assert tx.by_name("service", "renamed") is None and tx.by_name("service", "moved") is None
        assert tx.by_name("service", "committed").id == "c1"
        with pytest.raises(Conflict):
            tx.create(svc("a3", "Alpha"))
        tx.create(svc("b2", "beta"))

    await store.update(fn)
    assert sorted(s.id for s in store.view().services()) == ["a", "b2", "c1"]


async def test_a_failed_transaction_of_a_batch_leaves_its_names_free_for_the_next() -> None:
    prop = GatedProposer()
    store = MemoryStore(prop, SystemClock())
    first = asyncio.ensure_future(store.update(lambda tx: tx.create(svc("s0", "zero"))))
    await asyncio.sleep(0)  # the first entry is in flight: the next three share one entry

    def boom(tx):  # type: ignore[no-untyped-def]
        tx.create(svc("bad", "taken"))
        raise ValueError("fails alone")

    failing = asyncio.ensure_future(store.update(boom))
    ok = asyncio.ensure_future(store.update(lambda tx: tx.create(svc("good", "TAKEN"))))
    dup = asyncio.ensure_future(store.update(lambda tx: tx.create(svc("dup", "taken"))))
    await asyncio.sleep(0)
    prop.gate.set()
    await first
    with pytest.raises(ValueError):
        await failing
    assert (await ok).id == "good"
    with pytest.raises(Conflict):  # the name the transaction before it in the same entry took
        await dup
    assert len(prop.entries) == 2
    assert store.view().by_name("service", "taken").id == "good"


async def test_an_object_made_with_the_transactions_meta_is_stored_without_a_copy() -> None:
    store = memory_store(SystemClock())
    made: list[Task] = []

    def fn(tx):  # type: ignore[no-untyped-def]
        t = Task(id="t1", service_id="s1", meta=tx.creation_meta())
        made.append(t)
        assert tx.create(t) is t
        moved = replace(t, node_id="n1")  # updated again in the same transaction: its meta is still right
        assert tx.update(moved) is moved
        other = tx.create(Task(id="t2"))  # made without it: stamped on a copy, as before
        assert other.meta is t.meta
        made.append(moved)

    await store.update(fn)
    stored = store.view().task("t1")
    assert stored is made[1]
    assert (stored.meta.version, stored.meta.created_at) == (store.version, stored.meta.updated_at)
    assert store.view().task("t2").meta is stored.meta
    # Objects of earlier transactions never carry this one's meta: they are stamped anew.
    again = await store.update(lambda tx: tx.update(replace(stored, node_id="n2")))
    assert again.meta.version == store.version == stored.meta.version + 1


class EntryGates(MemoryProposer):
    """Commits each entry once the test opens that entry's own gate."""

    def __init__(self) -> None:
        super().__init__()
        self.proposing: asyncio.Queue[asyncio.Event] = asyncio.Queue()

    async def propose(self, entry: bytes) -> int:
        gate = asyncio.Event()
        self.proposing.put_nowait(gate)
        await gate.wait()
        return await super().propose(entry)


async def test_wait_idle_returns_once_nothing_is_queued_or_being_committed() -> None:
    proposer = EntryGates()
    store = MemoryStore(proposer, SystemClock())
    await store.wait_idle()  # nothing ever queued
    first = asyncio.ensure_future(store.update(lambda tx: tx.create(svc("s1", "web"))))
    gate = await proposer.proposing.get()
    idle = asyncio.ensure_future(store.wait_idle())
    second = asyncio.ensure_future(store.update(lambda tx: tx.create(svc("s2", "api"))))
    gate.set()
    gate = await proposer.proposing.get()  # the first is committed, the second is being committed
    assert first.done() and not idle.done()
    gate.set()
    await idle
    assert second.done()
