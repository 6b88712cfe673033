"""A one-manager store written before Raft (`log.db` + JSON snapshots) opens as Raft storage with nothing lost.

The old format is written here with plain sqlite3, as the store before Raft laid it out: a table of entries
(`MemoryStore`'s entries, as its proposer receives them) and `snapshots/snap-<index>-<term>.json` files holding
`MemoryStore.save()`, with the log before the newest snapshot deleted.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

from shoal.clock import SystemClock
from shoal.manager.migrate import migrate_to_raft
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.transport import NullTransport
from shoal.model.objects import Annotations, Service, ServiceSpec
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.sim import MemoryProposer


def svc(i: int) -> Service:
    return Service(id=f"s{i}", spec=ServiceSpec(annotations=Annotations(name=f"svc{i}")))


Write = Callable[[Tx], object]


async def write_legacy(directory: Path, writes: list[Write], snapshot_at: int | None = None) -> MemoryStore:
    """A data directory of the format before Raft holding `writes` (one entry each), with a snapshot after the
    `snapshot_at`-th entry and the log before it deleted; returns the store that wrote it."""
    clock = SystemClock()
    proposer = MemoryProposer()
    store = MemoryStore(proposer, clock)
    snapshot: tuple[int, bytes] | None = None
    for i, fn in enumerate(writes, start=1):
        await store.update(fn)
        if i == snapshot_at:
            snapshot = (i, store.save())
    (directory / "snapshots").mkdir(parents=True)
    db = sqlite3.connect(directory / "log.db")
    with db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE entries (idx INTEGER PRIMARY KEY, term INTEGER, data BLOB)")
        db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT)")
        first = snapshot[0] + 1 if snapshot is not None else 1
        db.executemany("INSERT INTO entries (idx, term, data) VALUES (?, 1, ?)",
                       [(i, e) for i, e in enumerate(proposer.entries, start=1) if i >= first])
    db.close()
    if snapshot is not None:
        (directory / "snapshots" / f"snap-{snapshot[0]:016d}-1.json").write_bytes(snapshot[1])
    return store



async def test_legacy_log_and_snapshot_become_the_raft_snapshot(tmp_path: Path) -> None:
    clock = SystemClock()
    writes: list[Write] = [lambda tx, i=i: tx.create(svc(i)) for i in range(7)]
    writes.append(lambda tx: tx.delete("service", "s2"))
    legacy = await write_legacy(tmp_path, writes, snapshot_at=6)  # a snapshot plus a log tail
    version = legacy.version

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
    await write_legacy(tmp_path, [lambda tx: tx.create(svc(1))])
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
