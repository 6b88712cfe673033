"""Offline check and repair of a manager's Raft data that holds what no replica can apply.

A manager stops (exit status `APPLY_FAILED_EXIT`, a log line naming the entry) when a committed entry cannot be
applied: every manager holds the same entry, so none can replay its log past it. `shoal raft check` lists such
entries (and snapshot objects); `shoal raft repair --index N` rewrites entry N without the changes that cannot be
decoded (an entry left with none becomes a no-op: the log keeps its index and term, so Raft's log matching still
holds). Run on every manager's data directory, with every manager stopped: a manager still running may hold the
bad object in memory and would otherwise diverge from the repaired ones. See docs/operations.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError
from shoal.manager.keys import DataCipher, KeyStore
from shoal.manager.raft.core import Entry, EntryType, Snapshot
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.model.codec import decode_as
from shoal.store.memory import KINDS

APPLY_FAILED_EXIT = 65  # EX_DATAERR: the data (the Raft log) is bad, not the program or the machine


@dataclass(frozen=True, slots=True)
class BadChange:
    where: str  # "entry 42" or "snapshot 40"
    kind: str
    obj_id: str
    error: str


def open_storage(data_dir: Path, unlock_key: str = "") -> SqliteStorage:
    """The Raft storage of the manager whose data directory is `data_dir` (its data key from disk, opened with
    `unlock_key` when the swarm is locked)."""
    raft_dir = data_dir / "raft"
    if not (raft_dir / "raft.db").exists():
        raise ShoalError(f"{data_dir} holds no manager's Raft data ({raft_dir / 'raft.db'} is missing)")
    keys = KeyStore(data_dir / "certificates")
    cipher = None
    if keys.exists():
        cipher = DataCipher((keys.unlock(unlock_key) if keys.locked() else keys.load()).dek)
    return SqliteStorage(raft_dir, cipher)


def _bad_actions(body: Any, where: str) -> tuple[list[Any], list[BadChange]]:
    """(the actions that decode, the changes that do not) of one entry's body."""
    kept: list[Any] = []
    bad: list[BadChange] = []
    for a in body.get("actions") or ():
        try:
            cls = KINDS.get(a["kind"])
            if cls is not None:
                decode_as(cls, a["obj"])
            kept.append(a)
        except Exception as e:  # whatever stops a replica's apply
            obj = a.get("obj") if isinstance(a, dict) else None
            oid = str(obj.get("id", "")) if isinstance(obj, dict) else ""
            bad.append(BadChange(where, str(a.get("kind", "?")) if isinstance(a, dict) else "?", oid, repr(e)))
    return kept, bad


def _loads(data: bytes) -> Any:
    return json.loads(data)  # reads what orjson and json wrote, NaN included


def check(storage: SqliteStorage) -> list[BadChange]:
    """Every change in the snapshot and the log that a replica could not apply."""
    out: list[BadChange] = []
    snap = storage.load_snapshot()
    if snap is not None and snap.data:
        out.extend(_bad_snapshot_objects(snap)[1])
    for e in storage.entries(storage.first_index(), storage.last_index() + 1):
        if e.type != EntryType.NORMAL or not e.data:
            continue
        try:
            body = _loads(e.data)
            int(body["version"])
        except Exception as exc:
            out.append(BadChange(f"entry {e.index}", "?", "", f"unreadable entry: {exc!r}"))
            continue
        out.extend(_bad_actions(body, f"entry {e.index}")[1])
    return out


def _bad_snapshot_objects(snap: Snapshot) -> tuple[Any, list[BadChange]]:
    body = _loads(snap.data)
    bad: list[BadChange] = []
    where = f"snapshot {snap.meta.index}"
    for kind, objs in (body.get("objects") or {}).items():
        cls = KINDS.get(kind)
        if cls is None:
            continue
        kept = []
        for raw in objs:
            try:
                decode_as(cls, raw)
                kept.append(raw)
            except Exception as e:
                bad.append(BadChange(where, kind, str(raw.get("id", "")) if isinstance(raw, dict) else "",
                                     repr(e)))
        body["objects"][kind] = kept
    return body, bad


def repair_entry(storage: SqliteStorage, index: int) -> list[BadChange]:
    """Rewrite entry `index` without its changes that cannot be applied (all of them when the entry cannot be
    read at all: it becomes a no-op). Returns what was dropped."""
    if not storage.first_index() <= index <= storage.last_index():
        raise ShoalError(f"the log holds entries {storage.first_index()} to {storage.last_index()}, not {index}")
    tail = storage.entries(index, storage.last_index() + 1)
    e = tail[0]
    if e.type != EntryType.NORMAL:
        raise ShoalError(f"entry {index} is a membership change, not a store change: it is not repaired here")
    try:
        body = _loads(e.data)
        kept, dropped = _bad_actions(body, f"entry {index}")
        data = b"" if not kept else json.dumps({**body, "actions": kept}, separators=(",", ":")).encode()
    except Exception as exc:
        dropped, data = [BadChange(f"entry {index}", "?", "", f"unreadable entry: {exc!r}")], b""
    if dropped:
        storage.append([Entry(e.index, e.term, e.type, data), *tail[1:]])  # same index and term: a new payload
        storage.sync()
    return dropped


def repair_snapshot(storage: SqliteStorage) -> list[BadChange]:
    """Rewrite the current snapshot without the objects that cannot be decoded. Returns what was dropped."""
    snap = storage.load_snapshot()
    if snap is None or not snap.data:
        return []
    body, dropped = _bad_snapshot_objects(snap)
    if dropped:
        storage.write_snapshot_file(Snapshot(snap.meta, json.dumps(body, separators=(",", ":")).encode()))
    return dropped


__all__ = ["APPLY_FAILED_EXIT", "BadChange", "check", "open_storage", "repair_entry", "repair_snapshot"]
