"""Carrying a one-manager data directory of the format before Raft over to the Raft storage, at start.

The format before Raft, read here and nowhere else:

    log.db                           sqlite: entries(idx INTEGER PRIMARY KEY, term INTEGER, data BLOB), the
                                     store's entries as `MemoryStore.apply_entry` takes them
    snapshots/snap-<index>-<term>.json   `MemoryStore.save()` at that index; the log before it was deleted

The state is the newest snapshot, then the entries after it, in index order.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from shoal.clock import Clock
from shoal.manager.raft.core import HardState, SnapshotMeta
from shoal.manager.raft.core import Snapshot as RaftSnapshot
from shoal.manager.raft.sqlite_storage import SqliteStorage, fsync_dir
from shoal.store.memory import MemoryStore


def migrate_to_raft(directory: Path, raft_id: int, clock: Clock) -> bool:
    """Carry a one-manager log of the format before Raft (`log.db` + `snapshots/snap-*.json`) over to the Raft
    storage in the same directory: the whole state becomes the Raft snapshot at the old log's last index
    (voters: this manager alone), then the old files go. Returns whether there was anything to migrate.
    Done before `SqliteStorage` opens the directory (it deletes snapshot files it does not know)."""
    if not (directory / "log.db").exists() or (directory / "raft.db").exists():
        return False
    store = read_legacy(directory, clock)
    index = max(store.applied_index, 1)
    data = store.save()
    legacy = [directory / n for n in ("log.db", "log.db-wal", "log.db-shm")]
    legacy += list((directory / "snapshots").glob("snap-*.json"))
    # Built aside and moved in with one rename (raft.db last): a crash part way leaves the old log in charge.
    tmp = directory / "raft.migrating"
    shutil.rmtree(tmp, ignore_errors=True)
    storage = SqliteStorage(tmp)
    try:
        storage.apply_snapshot(RaftSnapshot(SnapshotMeta(index, 1, frozenset({raft_id})), data))
        storage.set_hard_state(HardState(term=1, vote=0, commit=index))
        storage.sync()
    finally:
        storage.close()
    (directory / "snapshots").mkdir(exist_ok=True)
    for snap in (tmp / "snapshots").iterdir():
        os.replace(snap, directory / "snapshots" / snap.name)
    os.replace(tmp / "raft.db", directory / "raft.db")
    fsync_dir(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    for p in legacy:
        p.unlink(missing_ok=True)
    return True


class _ReadOnly:
    """The proposer of a store that is only read: the old log is never written again."""

    async def propose(self, entry: bytes) -> int:
        raise RuntimeError("the store of a data directory before Raft is read-only")


def _legacy_snapshot(directory: Path) -> tuple[int, Path] | None:
    """The newest `snapshots/snap-<index>-<term>.json` (highest index, then term) and its index."""
    best: tuple[tuple[int, int], Path] | None = None
    for p in (directory / "snapshots").glob("snap-*.json"):
        try:
            _, idx, term = p.stem.split("-")
            key = (int(idx), int(term))
        except ValueError:
            continue
        if best is None or key > best[0]:
            best = (key, p)
    return None if best is None else (best[0][0], best[1])


def read_legacy(directory: Path, clock: Clock) -> MemoryStore:
    """The store a data directory of the format before Raft holds: its newest snapshot, then its log after it."""
    store = MemoryStore(_ReadOnly(), clock)
    start = 1
    snap = _legacy_snapshot(directory)
    if snap is not None:
        store.restore(snap[1].read_bytes(), snap[0])
        start = snap[0] + 1
    db = sqlite3.connect(directory / "log.db")
    try:
        rows = db.execute("SELECT idx, data FROM entries WHERE idx >= ? ORDER BY idx", (start,)).fetchall()
    finally:
        db.close()
    for idx, data in rows:
        store.apply_entry(int(idx), bytes(data))
    return store
