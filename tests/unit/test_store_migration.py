"""A one-manager store written before Raft (`log.db` + JSON snapshots) opens as Raft storage with nothing lost."""

from __future__ import annotations

import random
from pathlib import Path

from shoal.clock import SystemClock
from shoal.manager.migrate import migrate_to_raft
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.transport import NullTransport
from shoal.model.objects import Annotations, Service, ServiceSpec
from shoal.store.memory import MemoryStore
from shoal.store.wal import open_local_store


def svc(i: int) -> Service:
    return Service(id=f"s{i}", spec=ServiceSpec(annotations=Annotations(name=f"svc{i}")))


async def test_legacy_log_and_snapshot_become_the_raft_snapshot(tmp_path: Path) -> None:
    clock = SystemClock()
    legacy = open_local_store(tmp_path, clock, snapshot_interval=3)  # a snapshot plus a log tail
    for i in range(7):
        await legacy.update(lambda tx, i=i: tx.create(svc(i)))
    await legacy.update(lambda tx: tx.delete("service", "s2"))
    version = legacy.version
    legacy.proposer.log.close()  # type: ignore[attr-defined]
    assert list((tmp_path / "snapshots").glob("snap-*.json"))

    assert migrate_to_raft(tmp_path, 42, clock)
    assert not (tmp_path / "log.db").exists() and not list((tmp_path / "snapshots").glob("*.json"))
    assert not migrate_to_raft(tmp_path, 42, clock)  # once only

    storage = SqliteStorage(tmp_path)
    node = RaftNode(42, storage, NullTransport(), clock, rng=random.Random(1))
    store = MemoryStore(node, clock)
    node.attach(store)
    await node.start()
    try:
        await node.leader_event.wait()
        assert sorted(s.id for s in store.view().services()) == ["s0", "s1", "s3", "s4", "s5", "s6"]
        assert store.version == version
        assert node.voters == frozenset({42})
        await store.update(lambda tx: tx.create(svc(9)))  # and it goes on writing through Raft
        assert store.view().service("s9") is not None
    finally:
        await node.stop()
        storage.close()


async def test_a_migration_cut_short_leaves_the_legacy_log_in_charge(tmp_path: Path) -> None:
    clock = SystemClock()
    legacy = open_local_store(tmp_path, clock)
    await legacy.update(lambda tx: tx.create(svc(1)))
    legacy.proposer.log.close()  # type: ignore[attr-defined]
    # What a crash before the final rename leaves: a half-built Raft storage next to the old log.
    SqliteStorage(tmp_path / "raft.migrating").close()
    assert migrate_to_raft(tmp_path, 7, clock)
    storage = SqliteStorage(tmp_path)
    try:
        snap = storage.load_snapshot()
        assert snap is not None and snap.meta.voters == frozenset({7})
        restored = MemoryStore(NullProposer(), clock)
        restored.restore(snap.data, snap.meta.index)
        assert restored.view().service("s1") is not None
    finally:
        storage.close()


class NullProposer:
    async def propose(self, entry: bytes) -> int:
        raise AssertionError("read-only")
