"""The Raft core's `Storage` on disk: the log and hard state in sqlite, snapshots in files.

Layout of a manager's raft directory:

    raft.db                      sqlite, WAL mode, synchronous=FULL
        entries(idx, term, data)     data = Entry.encode() (format byte, type byte, payload)
        state(key, value)            term, vote, commit, snapshot ("index term"), format
    snapshots/snap-<index>-<term>.snap   Snapshot.encode() (format byte, voters, application data)

Writes between two `sync()` calls form one sqlite transaction, so a Ready (entries + hard state, and a
snapshot's bookkeeping) costs one fsync of the WAL and is all-or-nothing after a crash. A Ready that need not
sync (its commit index alone moved) is `flush()`ed: committed with synchronous=NORMAL for that transaction, in the
WAL without an fsync (a crash of the process keeps it; a power cut may lose it, never a synced write after it).

Snapshots: the file is written to a temporary name, fsync'd, renamed and the directory fsync'd *before*
the transaction that names it in `state.snapshot` and deletes the log it covers (up to `compact_index`: a
local snapshot may keep a catch-up tail of entries it already holds, for followers slightly behind); the
previous snapshot file is removed only after that transaction committed. A crash in between leaves an
unreferenced file that the next open ignores and deletes. Which snapshot counts is therefore decided by sqlite
alone, atomically with the log truncation: in particular `apply_snapshot` (a snapshot received from the leader)
deletes *every* entry, including those after the snapshot's index (they belong to a log that diverged), in the
same transaction that makes the snapshot current, so a crash cannot leave stale entries next to a newer snapshot.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from shoal.manager.raft.core import Entry, HardState, Snapshot, SnapshotMeta, UnsupportedFormat
from shoal.manager.raft.storage import InitialState


class DataCipher(Protocol):
    """Authenticated encryption of blobs at rest (shoal.manager.keys.DataCipher is the manager's): `aad`
    binds a blob to where it belongs, so blobs cannot be swapped around unnoticed."""

    def seal(self, data: bytes, aad: bytes) -> bytes: ...

    def open(self, blob: bytes, aad: bytes) -> bytes: ...


def entry_aad(index: int, term: int) -> bytes:
    return b"entry" + struct.pack(">QQ", index, term)


def snapshot_aad(index: int, term: int) -> bytes:
    return b"snapshot" + struct.pack(">QQ", index, term)

STORAGE_FORMAT = 1
WAL_SIZE_LIMIT = 8 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or removal in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SqliteStorage:
    """Durable `shoal.manager.raft.storage.Storage`. Not thread-safe: one writer at a time (the shell's
    Ready loop, possibly from a worker thread, hence check_same_thread=False)."""

    def __init__(self, directory: Path, cipher: DataCipher | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._cipher = cipher
        self.dir = directory
        self.snap_dir = directory / "snapshots"
        self.snap_dir.mkdir(exist_ok=True)
        self._db = sqlite3.connect(directory / "raft.db", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # The WAL file is cut back to this after a checkpoint; else it keeps the size of the largest write burst.
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._db.execute("CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, "
                         "data BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        fmt = self._get("format")
        if fmt is None:
            self._db.execute("INSERT INTO state (key, value) VALUES ('format', ?)", (str(STORAGE_FORMAT),))
        elif int(fmt) > STORAGE_FORMAT:
            raise UnsupportedFormat(f"raft storage format {fmt}")
        self._in_tx = False
        self._hard_state: HardState | None = None  # set, not yet written: written by the next sync or flush
        self._to_delete: list[Path] = []
        self.syncs = 0
        # Called with the seconds each WAL commit (its fsync) took, from whichever thread synced (the daemon's
        # metrics: shoal_raft_fsync_seconds).
        self.on_fsync: Callable[[float], None] | None = None
        self.snapshot_reads = 0  # snapshot files read (`load_snapshot`): a restore or a snapshot sent
        encrypted = self._get("encryption") is not None
        if encrypted and cipher is None:
            raise UnsupportedFormat(f"{directory}: the Raft data is encrypted and no key was given")
        self._sealed = encrypted  # sealed snapshots have a file name of their own (.ssnap)
        # Only the current snapshot's metadata is kept; its data is read from its file when asked for
        # (`load_snapshot`: a restore, or a snapshot for a follower), never held (it can be hundreds of MiB).
        stored = self._read_snapshot(sealed=encrypted)
        self._snap_meta: SnapshotMeta | None = stored.meta if stored is not None else None
        del stored
        self._cleanup_snapshot_files()
        if cipher is not None and not encrypted:
            self._encrypt_in_place()

    # --- encryption at rest ------------------------------------------------------------------------

    def _seal_entry(self, index: int, term: int, payload: bytes) -> bytes:
        if self._cipher is None:
            return payload
        return self._cipher.seal(payload, entry_aad(index, term))

    def _open_entry(self, index: int, term: int, blob: bytes) -> bytes:
        if self._cipher is None:
            return blob
        return self._cipher.open(blob, entry_aad(index, term))

    def _encrypt_in_place(self) -> None:
        """Data written before encryption (an older Shoal, a migrated log): sealed in one transaction, the
        snapshot rewritten sealed first, so a crash leaves either all of it clear or all of it sealed."""
        assert self._cipher is not None
        snap = self.load_snapshot()
        old = self._snap_path(snap.meta.index, snap.meta.term) if snap is not None else None
        self._sealed = True
        if snap is not None:
            self._write_snapshot_file(snap)  # under the sealed name: unreferenced until the commit
            del snap
        rows = self._db.execute("SELECT idx, term, data FROM entries ORDER BY idx").fetchall()
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("UPDATE entries SET data = ? WHERE idx = ?",
                             [(self._seal_entry(int(i), int(t), bytes(d)), int(i)) for i, t, d in rows])
        self._put("encryption", "aes-256-gcm-1")
        self._db.execute("COMMIT")
        if old is not None:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._in_tx:
            self._db.execute("ROLLBACK")  # never synced: as if the process had died here
            self._in_tx = False
        self._db.close()

    # --- helpers -----------------------------------------------------------------------------------

    def _get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _put(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def _snap_path(self, index: int, term: int) -> Path:
        return self.snap_dir / f"snap-{index:016d}-{term}.{'ssnap' if self._sealed else 'snap'}"

    def _read_snapshot(self, *, sealed: bool, at: tuple[int, int] | None = None) -> Snapshot | None:
        """The snapshot at `at` (index, term), by default the one the database names."""
        if at is None:
            meta = self._get("snapshot")
            if meta is None:
                return None
            index, term = (int(x) for x in meta.split())
        else:
            index, term = at
        blob = self._snap_path(index, term).read_bytes()
        if sealed:
            assert self._cipher is not None
            blob = self._cipher.open(blob, snapshot_aad(index, term))
        return Snapshot.decode(index, term, blob)

    def _cleanup_snapshot_files(self) -> None:
        current = self._snap_path(self._snap_meta.index, self._snap_meta.term) \
            if self._snap_meta is not None else None
        for p in self.snap_dir.iterdir():
            if p != current:
                p.unlink(missing_ok=True)

    def _write_snapshot_file(self, snap: Snapshot) -> None:
        final = self._snap_path(snap.meta.index, snap.meta.term)
        tmp = final.with_suffix(".tmp")
        blob = snap.encode()
        if self._cipher is not None:
            blob = self._cipher.seal(blob, snapshot_aad(snap.meta.index, snap.meta.term))
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk: do not keep what was written of it
            raise
        os.replace(tmp, final)
        fsync_dir(self.snap_dir)

    def write_snapshot_file(self, snap: Snapshot) -> None:
        """The slow half of `save_snapshot` (seal, write, fsync the file), safe in a worker thread while the
        loop goes on: the file is not referenced until `save_snapshot(snap, written=True)` commits it."""
        self._write_snapshot_file(snap)

    def _install(self, snap: Snapshot, *, drop_all: bool, written: bool = False,
                 compact_index: int | None = None) -> None:
        old = self._snap_meta
        if not written:
            self._write_snapshot_file(snap)
        self._begin()
        if drop_all:
            self._db.execute("DELETE FROM entries")
        else:
            cut = snap.meta.index if compact_index is None else min(compact_index, snap.meta.index)
            self._db.execute("DELETE FROM entries WHERE idx <= ?", (cut,))
        self._put("snapshot", f"{snap.meta.index} {snap.meta.term}")
        self._snap_meta = snap.meta
        if old is not None and (old.index, old.term) != (snap.meta.index, snap.meta.term):
            self._to_delete.append(self._snap_path(old.index, old.term))

    @property
    def _offset(self) -> int:
        return self._snap_meta.index if self._snap_meta is not None else 0

    # --- Storage -----------------------------------------------------------------------------------

    def load(self) -> InitialState:
        term, vote, commit = (int(self._get(k) or 0) for k in ("term", "vote", "commit"))
        first = self.first_index()  # at or below the snapshot's index + 1 (a catch-up tail)
        entries = tuple(self.entries(first, 1 << 62))
        for k, e in enumerate(entries):
            if e.index != first + k:
                raise ValueError(f"raft log has a gap before index {e.index}")
        return InitialState(HardState(term, vote, commit), self.load_snapshot(), entries)

    def append(self, entries: Sequence[Entry]) -> None:
        off = self._offset
        rows = [(e.index, e.term, self._seal_entry(e.index, e.term, e.encode())) for e in entries if e.index > off]
        if not rows:
            return
        last = self.last_index()
        if rows[0][0] > last + 1:
            raise ValueError(f"gap in the log: appending {rows[0][0]} after {last}")
        self._begin()
        self._db.execute("DELETE FROM entries WHERE idx >= ?", (rows[0][0],))
        self._db.executemany("INSERT INTO entries (idx, term, data) VALUES (?, ?, ?)", rows)

    def set_hard_state(self, hs: HardState) -> None:
        # Kept until the sync or flush that follows: a flush commits it in a transaction of its own, started
        # with fsync off (a safety level cannot change inside a transaction).
        self._hard_state = hs

    def _write_hard_state(self) -> None:
        hs, self._hard_state = self._hard_state, None
        if hs is not None:
            self._begin()
            self._put("term", str(hs.term))
            self._put("vote", str(hs.vote))
            self._put("commit", str(hs.commit))

    def save_snapshot(self, snap: Snapshot, *, written: bool = False, compact_index: int | None = None) -> None:
        if snap.meta.index <= self._offset and self._snap_meta is not None:
            return
        self._install(snap, drop_all=False, written=written, compact_index=compact_index)

    def apply_snapshot(self, snap: Snapshot) -> None:
        self._install(snap, drop_all=True)

    def load_snapshot(self) -> Snapshot | None:
        """The current snapshot, read from its file on each call (the caller drops it when done)."""
        m = self._snap_meta
        if m is None:
            return None
        self.snapshot_reads += 1
        return self._read_snapshot(sealed=self._sealed, at=(m.index, m.term))

    def entries(self, lo: int, hi: int) -> list[Entry]:
        rows = self._db.execute("SELECT idx, term, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
                                (lo, hi)).fetchall()
        return [Entry.decode(int(i), int(t), self._open_entry(int(i), int(t), bytes(d))) for i, t, d in rows]

    def term(self, index: int) -> int | None:
        off = self._offset
        if index == off:
            return self._snap_meta.term if self._snap_meta is not None else 0
        row = self._db.execute("SELECT term FROM entries WHERE idx = ?", (index,)).fetchone()
        return None if row is None else int(row[0])

    def first_index(self) -> int:
        """The first stored entry's index: the snapshot's + 1, or lower when a catch-up tail was kept."""
        row = self._db.execute("SELECT MIN(idx) FROM entries").fetchone()
        return min(self._offset + 1, int(row[0])) if row[0] is not None else self._offset + 1

    def last_index(self) -> int:
        row = self._db.execute("SELECT MAX(idx) FROM entries").fetchone()
        return max(self._offset, int(row[0] or 0))

    def flush(self) -> None:
        """The hard state committed without an fsync (synchronous=NORMAL: in the WAL, so a crash of the process
        keeps it; the next synced commit makes it durable with it, the WAL being one file). Entries written and
        not yet synced (not the case of a Ready that need not sync) are synced with it instead."""
        if self._in_tx:
            self.sync()
            return
        if self._hard_state is None:
            return
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._write_hard_state()
            self._db.execute("COMMIT")
            self._in_tx = False
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def sync(self) -> None:
        self._write_hard_state()
        if self._in_tx:
            t0 = time.perf_counter()
            self._db.execute("COMMIT")  # synchronous=FULL: the WAL is fsync'd here
            self._in_tx = False
            if self.on_fsync is not None:
                self.on_fsync(time.perf_counter() - t0)
        for p in self._to_delete:
            p.unlink(missing_ok=True)
        self._to_delete.clear()
        self.syncs += 1
