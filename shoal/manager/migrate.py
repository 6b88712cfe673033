"""Carrying a one-manager data directory of the format before Raft over to the Raft storage, at start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from shoal.clock import Clock
from shoal.manager.raft.core import HardState, SnapshotMeta
from shoal.manager.raft.core import Snapshot as RaftSnapshot
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.store.wal import open_local_store


def migrate_to_raft(directory: Path, raft_id: int, clock: Clock) -> bool:
    """Carry a one-manager log of the format before Raft (`log.db` + `snapshots/snap-*.json`) over to the Raft
    storage in the same directory: the whole state becomes the Raft snapshot at the old log's last index
    (voters: this manager alone), then the old files go. Returns whether there was anything to migrate.
    Done before `SqliteStorage` opens the directory (it deletes snapshot files it does not know)."""
    if not (directory / "log.db").exists() or (directory / "raft.db").exists():
        return False
    store = open_local_store(directory, clock)
    log = store.proposer.log  # type: ignore[attr-defined]
    index = max(store.applied_index, 1)
    data = store.save()
    log.close()
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
    _fsync_dir(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    for p in legacy:
        p.unlink(missing_ok=True)
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
