from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from shoal.clock import SystemClock
from shoal.errors import Conflict, SequenceConflict
from shoal.model.objects import Annotations, Service, ServiceSpec, Task
from shoal.store.memory import Commit, Event, MemoryStore, WatchOverflow
from shoal.store.wal import open_local_store


def svc(sid: str, name: str) -> Service:
    return Service(id=sid, spec=ServiceSpec(annotations=Annotations(name=name)))


async def test_create_update_conflicts(tmp_path: Path) -> None:
    store = open_local_store(tmp_path, SystemClock())
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


async def test_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = open_local_store(tmp_path, SystemClock())

    def boom(tx):  # type: ignore[no-untyped-def]
        tx.create(svc("s1", "web"))
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await store.update(boom)
    assert store.view().all("service") == []
    assert store.version == 0


async def test_tx_reads_its_own_writes_and_indexes(tmp_path: Path) -> None:
    store = open_local_store(tmp_path, SystemClock())

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
    store = open_local_store(tmp_path, SystemClock(), snapshot_interval=3)
    for i in range(7):
        await store.update(lambda tx, i=i: tx.create(svc(f"s{i}", f"n{i}")))
    await store.update(lambda tx: tx.delete("service", "s0"))
    assert list((tmp_path / "snapshots").glob("snap-*.json"))  # a snapshot was taken
    again = open_local_store(tmp_path, SystemClock(), snapshot_interval=3)
    assert sorted(s.id for s in again.view().services()) == [f"s{i}" for i in range(1, 7)]
    assert again.version == store.version
    # and it keeps going from where it was
    created = await again.update(lambda tx: tx.create(svc("s9", "n9")))
    assert created.meta.version == store.version + 1


async def test_watch_gets_events_then_commit(tmp_path: Path) -> None:
    store = open_local_store(tmp_path, SystemClock())
    sub = store.watch(kinds=["service"])
    await store.update(lambda tx: (tx.create(svc("s1", "a")), tx.create(Task(id="t", service_id="s1"))))
    first = await asyncio.wait_for(sub.get(), 1)
    second = await asyncio.wait_for(sub.get(), 1)
    assert isinstance(first, Event) and first.kind == "service" and first.action == "create"
    assert isinstance(second, Commit) and second.version == 1


async def test_slow_watcher_is_closed_not_blocking(tmp_path: Path) -> None:
    store: MemoryStore = open_local_store(tmp_path, SystemClock())
    sub = store.watch(limit=3)
    for i in range(3):
        await store.update(lambda tx, i=i: tx.create(svc(f"s{i}", f"n{i}")))
    assert sub.closed
    with pytest.raises(WatchOverflow):
        while True:
            await sub.get()
