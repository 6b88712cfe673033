"""The storage seam of the Raft core, and an in-memory implementation that models durability.

`RaftCore` reads a `Storage` at construction (`load()`), and its snapshot again (`load_snapshot()`) each time
a follower must be sent it: the core keeps only a snapshot's metadata. The shell writes each `Ready`
into it with `persist_ready` (snapshot, entries, hard state, then one `sync()`, the fsync, when the Ready
`must_sync`) before sending the Ready's messages; `write_ready` is the same without the fsync, for a shell that
syncs elsewhere (a leader syncing in a thread while its appends go out).
`shoal.manager.raft.sqlite_storage.SqliteStorage` is the durable one.

`MemoryStorage` keeps two copies: what was written and what was synced. `crash()` throws away everything
written since the last `sync()`, as a power cut would (a `kill -9` keeps what was flushed, a subset of the cases);
the simulation restarts a core from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shoal.manager.raft.core import ConfChange, ConfChangeType, Entry, EntryType, HardState, Ready, Snapshot


@dataclass(frozen=True, slots=True)
class InitialState:
    hard_state: HardState
    snapshot: Snapshot | None
    # Contiguous, starting right after the snapshot (or at 1), or before it: a catch-up tail that the snapshot
    # already holds (`save_snapshot`'s compact_index), never applied again (`RaftCore` starts at the snapshot).
    entries: tuple[Entry, ...]


class Storage(Protocol):
    def load(self) -> InitialState: ...

    def append(self, entries: Sequence[Entry]) -> None:
        """Write entries; any stored entry at or after entries[0].index is replaced."""

    def set_hard_state(self, hs: HardState) -> None: ...

    def save_snapshot(self, snap: Snapshot, *, compact_index: int | None = None) -> None:
        """A local snapshot (`RaftCore.compact`): store it, then drop entries up to `compact_index` (default
        snap.meta.index; lower keeps a catch-up tail for followers slightly behind)."""

    def apply_snapshot(self, snap: Snapshot) -> None:
        """A snapshot received from the leader: store it and drop the whole log."""

    def load_snapshot(self) -> Snapshot | None:
        """The current snapshot with its data (a durable storage reads it from disk each time and keeps only
        its metadata; this in-memory one keeps the bytes)."""

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi."""

    def term(self, index: int) -> int | None: ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def sync(self) -> None:
        """Make every write so far durable (fsync)."""

    def flush(self) -> None:
        """Make every write so far survive a crash of this process, without waiting for the disk (a power cut
        may lose it; the next `sync` makes it durable too): a Ready that need not sync, its commit index."""


def write_ready(storage: Storage, rd: Ready) -> None:
    """Step 1 of handling a Ready without its fsync: its snapshot, entries and hard state written."""
    if rd.snapshot is not None:
        storage.apply_snapshot(rd.snapshot)
    if rd.entries:
        storage.append(rd.entries)
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)


def persist_ready(storage: Storage, rd: Ready) -> None:
    """Step 1 of handling a Ready: what must be durable before any of its messages is sent (synced), and a
    commit index that moved alone flushed (kept by a crash of the process, not necessarily of the machine)."""
    write_ready(storage, rd)
    if rd.must_sync:
        storage.sync()
    elif rd.hard_state is not None:
        storage.flush()


def bootstrap(storage: Storage, voters: Sequence[int]) -> None:
    """Start a new cluster (`swarm init` → one voter): the first entries are committed ADD_VOTER changes
    of term 1, identical on every founding member, so a manager added later learns the founding
    configuration from the log (or from a snapshot, which carries the voters) like any other entry."""
    entries = [Entry(k + 1, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, v).encode())
               for k, v in enumerate(sorted(voters))]
    storage.append(entries)
    storage.set_hard_state(HardState(term=1, vote=0, commit=len(entries)))
    storage.sync()


@dataclass(slots=True)
class _Disk:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    offset: int = 0  # the index before entries[0]: the snapshot's, or below it (a catch-up tail)

    def snap_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    def append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        floor = self.snap_index()  # entries the snapshot holds are never rewritten
        if first <= floor:
            entries = [e for e in entries if e.index > floor]
            if not entries:
                return
            first = entries[0].index
        off = self.offset
        last = off + len(self.entries)
        if first > last + 1:
            raise ValueError(f"gap in the log: appending {first} after {last}")
        del self.entries[first - off - 1:]
        self.entries.extend(entries)

    def save_snapshot(self, snap: Snapshot, compact_index: int | None) -> None:
        if snap.meta.index < self.snap_index():
            return
        cut = snap.meta.index if compact_index is None else min(compact_index, snap.meta.index)
        cut = max(self.offset, cut)
        self.entries = [e for e in self.entries if e.index > cut]
        self.offset = cut
        self.snapshot = snap

    def apply_snapshot(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.entries = []
        self.offset = snap.meta.index

    def copy(self) -> _Disk:
        return _Disk(self.hard_state, self.snapshot, list(self.entries), self.offset)


class MemoryStorage:
    """In-memory `Storage` where only synced writes survive `crash()`."""

    def __init__(self) -> None:
        self._live = _Disk()
        self._durable = _Disk()
        self._pending: list[tuple[str, object]] = []
        self.syncs = 0

    def load(self) -> InitialState:
        d = self._live
        return InitialState(d.hard_state, d.snapshot, tuple(d.entries))

    def append(self, entries: Sequence[Entry]) -> None:
        if entries:
            ents = list(entries)
            self._live.append(ents)
            self._pending.append(("append", ents))

    def set_hard_state(self, hs: HardState) -> None:
        self._live.hard_state = hs
        self._pending.append(("hs", hs))

    def save_snapshot(self, snap: Snapshot, *, compact_index: int | None = None) -> None:
        self._live.save_snapshot(snap, compact_index)
        self._pending.append(("save", (snap, compact_index)))

    def apply_snapshot(self, snap: Snapshot) -> None:
        self._live.apply_snapshot(snap)
        self._pending.append(("apply", snap))

    def load_snapshot(self) -> Snapshot | None:
        return self._live.snapshot

    def entries(self, lo: int, hi: int) -> list[Entry]:
        off = self._live.offset
        lo = max(lo, off + 1)
        return self._live.entries[lo - off - 1:max(0, hi - off - 1)]

    def term(self, index: int) -> int | None:
        d = self._live
        if d.offset < index <= d.offset + len(d.entries):
            return d.entries[index - d.offset - 1].term
        if index == d.snap_index():
            return d.snapshot.meta.term if d.snapshot is not None else 0
        return None

    def first_index(self) -> int:
        return self._live.offset + 1

    def last_index(self) -> int:
        return self._live.offset + len(self._live.entries)

    def sync(self) -> None:
        d = self._durable
        for op, arg in self._pending:
            if op == "append":
                assert isinstance(arg, list)
                d.append(arg)
            elif op == "hs":
                assert isinstance(arg, HardState)
                d.hard_state = arg
            elif op == "save":
                assert isinstance(arg, tuple)
                d.save_snapshot(*arg)
            else:
                assert isinstance(arg, Snapshot)
                d.apply_snapshot(arg)
        self._pending.clear()
        self.syncs += 1

    def flush(self) -> None:
        """Nothing: a flushed write is lost by `crash()` as by a power cut."""

    def crash(self) -> None:
        """Lose everything not synced."""
        self._pending.clear()
        self._live = self._durable.copy()
