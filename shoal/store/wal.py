"""A durable store of one writer, without Raft: the simulation's durable stores and the tests that replay a
log use it, and a data directory in this format is carried over to Raft at start (shoal.manager.migrate).

The log is sqlite3 in WAL mode with `synchronous=FULL` (crash safety is SQLite's; NORMAL is not safe
for Raft because a committed entry could vanish on power loss). Each append is one transaction. A
snapshot is the store's whole state, written to a temporary file, fsync'd and renamed, after which the
log prefix it covers is deleted. Restart = newest snapshot + the entries after it.

`LocalProposer` is the Proposer for a Raft group of one: an entry is committed once it is durable.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from shoal.clock import Clock
from shoal.store.memory import MemoryStore


@dataclass(frozen=True, slots=True)
class Snapshot:
    index: int
    term: int
    data: bytes


class SqliteLog:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.snap_dir = directory / "snapshots"
        self.snap_dir.mkdir(exist_ok=True)
        self._db = sqlite3.connect(directory / "log.db", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, term INTEGER, "
                         "data BLOB)")
        self._db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT)")
        row = self._db.execute("SELECT MAX(idx) FROM entries").fetchone()
        snap = self.latest_snapshot_meta()
        self.last_index = max(row[0] or 0, snap[0] if snap else 0)

    def close(self) -> None:
        self._db.close()

    # --- entries ----------------------------------------------------------------------------------

    def append(self, entries: list[tuple[int, int, bytes]]) -> None:
        """Durably append (index, term, data) entries; a later index replaces a conflicting suffix."""
        if not entries:
            return
        cur = self._db.cursor()
        cur.execute("BEGIN")
        try:
            cur.execute("DELETE FROM entries WHERE idx >= ?", (entries[0][0],))
            cur.executemany("INSERT INTO entries (idx, term, data) VALUES (?, ?, ?)", entries)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self.last_index = entries[-1][0]

    def entries(self, lo: int, hi: int | None = None) -> list[tuple[int, int, bytes]]:
        """Entries with lo <= index (< hi)."""
        if hi is None:
            rows = self._db.execute("SELECT idx, term, data FROM entries WHERE idx >= ? ORDER BY idx",
                                    (lo,)).fetchall()
        else:
            rows = self._db.execute("SELECT idx, term, data FROM entries WHERE idx >= ? AND idx < ? "
                                    "ORDER BY idx", (lo, hi)).fetchall()
        return [(int(i), int(t), bytes(d)) for i, t, d in rows]

    def compact(self, upto: int) -> None:
        self._db.execute("DELETE FROM entries WHERE idx <= ?", (upto,))

    # --- hard state (term, vote, ...) -------------------------------------------------------------

    def set_state(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    def get_state(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # --- snapshots --------------------------------------------------------------------------------

    def latest_snapshot_meta(self) -> tuple[int, int] | None:
        best: tuple[int, int] | None = None
        for p in self.snap_dir.glob("snap-*.json"):
            try:
                _, idx, term = p.stem.split("-")
                key = (int(idx), int(term))
            except ValueError:
                continue
            if best is None or key > best:
                best = key
        return best

    def save_snapshot(self, snap: Snapshot, keep_old: int = 0) -> None:
        final = self.snap_dir / f"snap-{snap.index:016d}-{snap.term}.json"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(snap.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dfd = os.open(self.snap_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        olds = sorted(self.snap_dir.glob("snap-*.json"))[:-1 - keep_old]
        for p in olds:
            p.unlink(missing_ok=True)
        self.compact(snap.index)

    def load_snapshot(self) -> Snapshot | None:
        meta = self.latest_snapshot_meta()
        if meta is None:
            return None
        path = self.snap_dir / f"snap-{meta[0]:016d}-{meta[1]}.json"
        return Snapshot(index=meta[0], term=meta[1], data=path.read_bytes())


class LocalProposer:
    """A Raft group of one: an entry is committed as soon as it is durable."""

    def __init__(self, log: SqliteLog, snapshot_interval: int = 10_000) -> None:
        self.log = log
        self.term = 1
        self.snapshot_interval = snapshot_interval
        self.store: MemoryStore | None = None
        self._since_snapshot = 0

    async def propose(self, entry: bytes) -> int:
        index = self.log.last_index + 1
        self.log.append([(index, self.term, entry)])
        self._since_snapshot += 1
        if self.store is not None and self._since_snapshot >= self.snapshot_interval:
            # Apply first so the snapshot includes this entry, then cut the log behind it.
            self.store.apply_entry(index, entry)
            self.log.save_snapshot(Snapshot(index=index, term=self.term, data=self.store.save()))
            self._since_snapshot = 0
        return index


def open_local_store(directory: Path, clock: Clock, snapshot_interval: int = 10_000) -> MemoryStore:
    """Open (or create) a one-manager store: newest snapshot, then replay the log after it."""
    log = SqliteLog(directory)
    proposer = LocalProposer(log, snapshot_interval)
    store = MemoryStore(proposer, clock)
    proposer.store = store
    snap = log.load_snapshot()
    start = 1
    if snap is not None:
        store.restore(snap.data, snap.index)
        start = snap.index + 1
    for idx, _term, data in log.entries(start):
        store.apply_entry(idx, data)
    return store
