"""Disaster recovery: `docker swarm init --force-new-cluster` on a surviving manager.

The manager's Raft storage is rewritten offline into a group of one: the store's state at the last committed
index (snapshot + committed entries; uncommitted ones are dropped, as swarmkit does, since no majority ever
acknowledged them) becomes a snapshot at that index in a new term, whose only voter is this manager. The other
managers' node records are made workers there (they are no longer in the group; their old certificates are
refused for Raft from then on); they can be removed and join again. The new storage is built aside and moved in
with one rename, so a crash part way leaves the old storage in charge.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from shoal.clock import Clock
from shoal.manager.keys import DataCipher
from shoal.manager.raft.core import EntryType, HardState, Snapshot, SnapshotMeta
from shoal.manager.raft.sqlite_storage import SqliteStorage, fsync_dir
from shoal.model.objects import WORKER
from shoal.store.memory import MemoryStore, Tx


class _Captive:
    """A proposer that commits at once, for editing a store offline."""

    def __init__(self, index: int) -> None:
        self.index = index

    async def propose(self, entry: bytes) -> int:
        self.index += 1
        return self.index


async def force_new_cluster(directory: Path, raft_id: int, node_id: str, clock: Clock,
                            cipher: DataCipher | None = None) -> int:
    """Rewrite the Raft storage in `directory` as a one-voter group of `raft_id`; returns the new snapshot index."""
    old = SqliteStorage(directory, cipher)
    try:
        state = old.load()
        hs = state.hard_state
        snap = state.snapshot
        commit = max(hs.commit, snap.meta.index if snap is not None else 0)
        proposer = _Captive(commit)
        store = MemoryStore(proposer, clock)
        if snap is not None and snap.data:
            store.restore(snap.data, snap.meta.index)
        snap_index = snap.meta.index if snap is not None else 0
        for e in state.entries:
            if e.index <= snap_index:
                continue  # the catch-up tail kept after compaction: already in the snapshot
            if e.index > commit:
                break
            if e.type == EntryType.NORMAL and e.data:
                store.apply_entry(e.index, e.data)
        store.applied_index = commit
        term = max(hs.term, snap.meta.term if snap is not None else 0) + 1
    finally:
        old.close()

    def only_me(tx: Tx) -> None:
        for n in tx.nodes():
            if n.id == node_id:
                if n.manager_status is not None:
                    tx.update(replace(n, manager_status=replace(n.manager_status, raft_id=raft_id, leader=True,
                                                                reachability="reachable")), check_version=False)
            elif n.role == "manager" or n.spec.role == "manager":
                tx.update(replace(n, spec=replace(n.spec, role=WORKER), observed_role=WORKER, manager_status=None),
                          check_version=False)

    await store.update(only_me)
    index = proposer.index
    tmp = directory / "recovering"

    shutil.rmtree(tmp, ignore_errors=True)
    new = SqliteStorage(tmp, cipher)
    try:
        new.apply_snapshot(Snapshot(SnapshotMeta(index, term, frozenset({raft_id})), store.save()))
        new.set_hard_state(HardState(term=term, vote=0, commit=index))
        new.sync()
    finally:
        new.close()
    # One rename is the commit point (raft.db); the new snapshot file goes in first (until then the old
    # database does not name it, and an open deletes it as unreferenced), the old files are deleted at next open.
    (directory / "snapshots").mkdir(exist_ok=True)
    for f in (tmp / "snapshots").iterdir():
        os.replace(f, directory / "snapshots" / f.name)
    for suffix in ("-wal", "-shm"):  # checkpointed and gone after the clean close above; never mix them in
        (directory / f"raft.db{suffix}").unlink(missing_ok=True)
    os.replace(tmp / "raft.db", directory / "raft.db")
    fsync_dir(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    return index
