"""The cluster store: typed objects in memory, synchronous transactions, watches after commit.

Contract (see docs/design/store.md):
- `await store.update(fn)` runs `fn(tx)` synchronously (nothing awaits inside a transaction), turns
  what it changed into one log entry, hands the entry to the `Proposer` (Raft),
  and applies it only once the proposer says it is committed. An exception in `fn` changes nothing.
- Writers are serialised: while one proposal is in flight the next `update` waits, so the version a
  transaction stamps (`store.version + 1`) is the one it commits with.
- Every replica applies the same entries with `apply_entry`, so the store is the replicated state machine.
- Watchers get the events of a transaction after it is applied, followed by a `Commit` marker. Each
  subscription is bounded; one that falls too far behind is closed (`WatchOverflow`) and must resync
  with `view_and_watch`, so a slow consumer never stalls the store.
- Stages (`add_stage`, the leader's loops) carry a transaction further before it is committed: each sees what
  the transaction wrote and may write more in it (the scheduler assigns the tasks the orchestrator just
  created). An object written more than once in such a transaction goes into the entry once, as it ends up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

import orjson

from shoal.clock import Clock
from shoal.errors import Conflict, InvalidArgument, NotFound, SequenceConflict, ShoalError, fresh
from shoal.model.codec import Unencodable, decode_as, encode
from shoal.model.objects import (
    Cluster,
    Config,
    Meta,
    Network,
    Node,
    Secret,
    Service,
    StoreObject,
    Task,
)

T = TypeVar("T")
ObjT = TypeVar("ObjT", bound=StoreObject)

log = logging.getLogger(__name__)

ENTRY_FORMAT = 1
MAX_BATCH = 1024  # transactions per log entry at most (bounds one entry's size)
# One object, encoded, at most (swarmkit's store refuses a change past 1.5 MiB, its Raft request limit): a larger
# one is refused with a 400 before it reaches the log, where every manager would have to hold, send and replay
# it. The largest legitimate objects are a few hundred KiB (a 500 KiB secret or config). A transaction of many
# objects (the tasks of a 10,000-replica service) is not limited by this.
MAX_OBJECT_BYTES = 3 * 512 * 1024
# A group-commit entry takes no more transactions once it holds this much.
MAX_ENTRY_BYTES = MAX_OBJECT_BYTES
# One transaction's change, encoded, at most. It is one log entry, which the Raft transport carries whole in one
# stream message (shoal.rpc.raft.MAX_MESSAGE, 64 MiB): a larger entry could never reach a follower, and the swarm
# would commit nothing after it. The manager's own loops write in transactions well under this (the orchestrator
# splits a pass over many services); one that would pass it is refused instead of wedging the log.
MAX_TRANSACTION_BYTES = 32 << 20

KINDS: dict[str, type[Any]] = {
    "cluster": Cluster,
    "node": Node,
    "network": Network,
    "secret": Secret,
    "config": Config,
    "service": Service,
    "task": Task,
}
_KIND_OF: dict[type[Any], str] = {v: k for k, v in KINDS.items()}
# Kinds whose names are unique (case-insensitively, as swarmkit's memdb name index is).
_UNIQUE_NAMES = frozenset({"service", "secret", "config", "network"})


def kind_of(obj: StoreObject) -> str:
    return _KIND_OF[type(obj)]


def name_of(obj: StoreObject) -> str:
    if isinstance(obj, Node):
        return obj.spec.annotations.name or obj.description.hostname
    if isinstance(obj, Task):
        return obj.annotations.name
    if isinstance(obj, Cluster):
        return obj.spec.annotations.name
    return obj.name


@dataclass(frozen=True, slots=True)
class Event:
    action: str  # "create" | "update" | "remove"
    kind: str
    obj: Any
    old: Any = None


@dataclass(frozen=True, slots=True)
class Commit:
    version: int


WatchItem = Event | Commit


class WatchOverflow(ShoalError):
    pass


Action = tuple[str, str, Any]  # (op, kind, object)
# A stage: given a transaction and what it wrote so far, write more in it; returns how to take back what the stage
# decided outside the store (its own bookkeeping) if the transaction does not commit after all.
Stage = Callable[["Tx", list[Action]], Callable[[], None] | None]


class Proposer(Protocol):
    """The seam between the store and consensus: make an entry durable and committed."""

    async def propose(self, entry: bytes) -> int:
        """Return the log index once `entry` is committed; raise if it cannot be (not the leader)."""


class _Tables:
    def __init__(self) -> None:
        self.objs: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        # Each object's encoding as its log entry carried it (kind -> id -> JSON bytes), present only while it is
        # the encoding of the object in `objs`: a snapshot reuses it instead of encoding every object again.
        self.enc: dict[str, dict[str, bytes]] = {k: {} for k in KINDS}
        self.names: dict[str, dict[str, str]] = {k: {} for k in _UNIQUE_NAMES}
        self.tasks_by_service: dict[str, dict[str, Task]] = {}
        self.tasks_by_node: dict[str, dict[str, Task]] = {}

    def put(self, kind: str, obj: Any, enc: bytes | None = None) -> Any:
        old = self.objs[kind].get(obj.id)
        if old is not None:
            self._unindex(kind, old)
        self.objs[kind][obj.id] = obj
        if enc is not None:
            self.enc[kind][obj.id] = enc
        elif old is not None:
            self.enc[kind].pop(obj.id, None)
        self._index(kind, obj)
        return old

    def pop(self, kind: str, obj_id: str) -> Any:
        old = self.objs[kind].pop(obj_id, None)
        if old is not None:
            self.enc[kind].pop(obj_id, None)
            self._unindex(kind, old)
        return old

    def _index(self, kind: str, obj: Any) -> None:
        if kind in self.names:
            self.names[kind][name_of(obj).lower()] = obj.id
        elif kind == "task":
            self.tasks_by_service.setdefault(obj.service_id, {})[obj.id] = obj
            if obj.node_id:
                self.tasks_by_node.setdefault(obj.node_id, {})[obj.id] = obj

    def _unindex(self, kind: str, obj: Any) -> None:
        if kind in self.names:
            key = name_of(obj).lower()
            if self.names[kind].get(key) == obj.id:
                del self.names[kind][key]
        elif kind == "task":
            by_svc = self.tasks_by_service.get(obj.service_id)
            if by_svc is not None:
                by_svc.pop(obj.id, None)
                if not by_svc:
                    del self.tasks_by_service[obj.service_id]
            if obj.node_id:
                by_node = self.tasks_by_node.get(obj.node_id)
                if by_node is not None:
                    by_node.pop(obj.id, None)
                    if not by_node:
                        del self.tasks_by_node[obj.node_id]


class ReadTx:
    """A consistent view as long as the caller does not await while using it."""

    def __init__(self, tables: _Tables) -> None:
        self._t = tables

    def get(self, kind: str, obj_id: str) -> Any:
        return self._t.objs[kind].get(obj_id)

    def all(self, kind: str) -> list[Any]:
        return list(self._t.objs[kind].values())

    def count(self, kind: str) -> int:
        return len(self._t.objs[kind])

    def by_name(self, kind: str, name: str) -> Any:
        oid = self._t.names[kind].get(name.lower())
        return None if oid is None else self._t.objs[kind].get(oid)

    def lookup(self, kind: str, ref: str) -> Any:
        """Resolve a full ID, a name, or a unique ID prefix, as dockerd's getService/getNode do."""
        direct = self.get(kind, ref)
        if direct is not None:
            return direct
        objs = {o.id: o for o in self.all(kind)}
        if kind in self._t.names:
            found = self.by_name(kind, ref)
            if found is not None and name_of(found) == ref:
                return found
        elif kind == "node":
            by_host = [o for o in objs.values() if name_of(o) == ref]
            if len(by_host) == 1:
                return by_host[0]
            if len(by_host) > 1:
                raise Conflict(f"node {ref} is ambiguous ({len(by_host)} matches found)")
        if ref:
            matches = [o for oid, o in objs.items() if oid.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise Conflict(f"{kind} {ref} is ambiguous ({len(matches)} matches found)")
        return None

    # typed helpers for the common kinds
    def cluster(self) -> Cluster | None:
        for c in self.all("cluster"):
            return c  # type: ignore[no-any-return]
        return None

    def service(self, sid: str) -> Service | None:
        return self.get("service", sid)  # type: ignore[no-any-return]

    def node(self, nid: str) -> Node | None:
        return self.get("node", nid)  # type: ignore[no-any-return]

    def task(self, tid: str) -> Task | None:
        return self.get("task", tid)  # type: ignore[no-any-return]

    def services(self) -> list[Service]:
        return self.all("service")

    def nodes(self) -> list[Node]:
        return self.all("node")

    def tasks(self, *, service_id: str | None = None, node_id: str | None = None) -> list[Task]:
        if service_id is not None:
            return list(self._t.tasks_by_service.get(service_id, {}).values())
        if node_id is not None:
            return list(self._t.tasks_by_node.get(node_id, {}).values())
        return list(self._t.objs["task"].values())


def _make_restamper(cls: type) -> Callable[[Any, Meta], Any]:
    """`replace(obj, meta=meta)` for one class, generated: a straight copy of the fields (the store
    restamps every object it writes, and `dataclasses.replace` was a visible part of that cost)."""
    names = [f.name for f in fields(cls)]
    lines = ["def restamp(obj, meta):", "    new = _new(_cls)"]
    lines += [f"    _set(new, {n!r}, {'meta' if n == 'meta' else 'obj.' + n})" for n in names]
    lines.append("    return new")
    env: dict[str, Any] = {"_new": object.__new__, "_set": object.__setattr__, "_cls": cls}
    exec("\n".join(lines), env)
    fn: Callable[[Any, Meta], Any] = env["restamp"]
    return fn


_restampers: dict[type, Callable[[Any, Meta], Any]] = {}


def _restamp(obj: ObjT, meta: Meta) -> ObjT:
    fn = _restampers.get(type(obj))
    if fn is None:
        fn = _restampers[type(obj)] = _make_restamper(type(obj))
    stamped: ObjT = fn(obj, meta)
    return stamped


class Tx(ReadTx):
    """A write transaction: changes are staged and applied only when the proposal commits."""

    def __init__(self, tables: _Tables, version: int, now: float) -> None:
        super().__init__(tables)
        self._version = version
        self._now = now
        self._staged: dict[str, dict[str, Any]] = {}  # kind -> id -> object; None = removed here
        # Staged tasks by service and by node (what `tasks(service_id=...)` adds to the committed ones),
        # and the (service, node) each staged task is filed under.
        self._staged_by_service: dict[str, dict[str, Task]] = {}
        self._staged_by_node: dict[str, dict[str, Task]] = {}
        self._staged_task_keys: dict[str, tuple[str, str]] = {}
        # The staged objects of the kinds with unique names, by lower-cased name (kind -> name -> id): a batch of
        # many creations checks each new name in O(1) instead of against every object staged before it.
        self._staged_names: dict[str, dict[str, str]] = {}
        self._metas: dict[float, Meta] = {}  # one Meta per creation time (shared, it is frozen)
        self.actions: list[tuple[str, str, Any]] = []  # (op, kind, obj)

    @property
    def version(self) -> int:
        return self._version

    @property
    def now(self) -> float:
        return self._now

    # reads see the staged changes
    def get(self, kind: str, obj_id: str) -> Any:
        staged = self._staged.get(kind)
        if staged is not None and obj_id in staged:
            return staged[obj_id]
        return self._t.objs[kind].get(obj_id)

    def _staged_of(self, kind: str) -> dict[str, Any]:
        return self._staged.get(kind) or {}

    def all(self, kind: str) -> list[Any]:
        staged = self._staged_of(kind)
        if not staged:
            return list(self._t.objs[kind].values())
        out = [o for oid, o in self._t.objs[kind].items() if oid not in staged]
        out.extend(o for o in staged.values() if o is not None)
        return out

    def count(self, kind: str) -> int:
        return len(self.all(kind))

    def by_name(self, kind: str, name: str) -> Any:
        lname = name.lower()
        staged_names = self._staged_names.get(kind)
        if staged_names:
            sid = staged_names.get(lname)
            if sid is not None:
                return self._staged[kind][sid]
        # Committed under that name, unless this transaction renamed or removed it.
        oid = self._t.names[kind].get(lname)
        if oid is None:
            return None
        o = self.get(kind, oid)
        return o if o is not None and name_of(o).lower() == lname else None

    def tasks(self, *, service_id: str | None = None, node_id: str | None = None) -> list[Task]:
        base = super().tasks(service_id=service_id, node_id=node_id)
        staged = self._staged_of("task")
        if not staged:
            return base
        out = [t for t in base if t.id not in staged]
        if service_id is not None:
            extra = self._staged_by_service.get(service_id, {}).values()
            if node_id is not None:
                extra = [t for t in extra if t.node_id == node_id]  # type: ignore[assignment]
        elif node_id is not None:
            extra = self._staged_by_node.get(node_id, {}).values()
        else:
            extra = [t for t in staged.values() if t is not None]  # type: ignore[assignment]
        out.extend(extra)
        return out

    # writes
    def creation_meta(self) -> Meta:
        """The meta `create` stamps in this transaction: an object made with it is stored without a copy."""
        meta = self._metas.get(self._now)
        if meta is None:
            meta = self._metas[self._now] = Meta(version=self._version, created_at=self._now,
                                                 updated_at=self._now)
        return meta

    def create(self, obj: ObjT) -> ObjT:
        kind = _KIND_OF[type(obj)]
        if self.get(kind, obj.id) is not None:
            raise Conflict(f"{kind} {obj.id} already exists")
        if kind in _UNIQUE_NAMES and self.by_name(kind, name_of(obj)) is not None:
            raise Conflict(f"{kind} name {name_of(obj)} already exists")
        meta = self.creation_meta()
        stamped = obj if obj.meta is meta else _restamp(obj, meta)
        self._stage("create", kind, stamped)
        return stamped

    def update(self, obj: ObjT, *, check_version: bool = True) -> ObjT:
        kind = _KIND_OF[type(obj)]
        cur = self.get(kind, obj.id)
        if cur is None:
            raise NotFound(f"{kind} {obj.id} not found")
        if check_version and cur.meta.version != obj.meta.version:
            raise SequenceConflict()
        if kind in _UNIQUE_NAMES and name_of(cur).lower() != name_of(obj).lower():
            other = self.by_name(kind, name_of(obj))
            if other is not None and other.id != obj.id:
                raise Conflict(f"{kind} name {name_of(obj)} already exists")
        created = cur.meta.created_at
        meta = self._metas.get(created)
        if meta is None:
            meta = self._metas[created] = Meta(version=self._version, created_at=created,
                                               updated_at=self._now)
        # An object created or updated earlier in this transaction already carries the meta: no copy.
        stamped = obj if obj.meta is meta else _restamp(obj, meta)
        self._stage("update", kind, stamped)
        return stamped

    def delete(self, kind: str, obj_id: str) -> None:
        cur = self.get(kind, obj_id)
        if cur is None:
            raise NotFound(f"{kind} {obj_id} not found")
        self._stage("remove", kind, cur)

    def savepoint(self) -> int:
        return len(self.actions)

    def rollback(self, savepoint: int) -> None:
        """Forget what was staged after `savepoint` (a transaction of a batch that raised)."""
        if savepoint >= len(self.actions):
            return
        kept = self.actions[:savepoint]
        self._staged.clear()
        self._staged_by_service.clear()
        self._staged_by_node.clear()
        self._staged_task_keys.clear()
        self._staged_names.clear()
        self.actions = []
        for op, kind, obj in kept:
            self._stage(op, kind, obj)

    def collapse(self, savepoint: int) -> None:
        """Write each object the actions after `savepoint` created or updated more than once as one action: a
        creation then updates, one creation of the last version; updates, one update. (A removal is kept as it
        is.) The staged state does not change; the log entry and the events carry each object once."""
        out: list[Action] = []
        first: dict[tuple[str, str], int] = {}
        for op, kind, obj in self.actions[savepoint:]:
            key = (kind, obj.id)
            i = first.get(key)
            if i is None or op != "update" or out[i][0] == "remove":
                first[key] = len(out)
                out.append((op, kind, obj))
            else:
                out[i] = (out[i][0], kind, obj)
        self.actions[savepoint:] = out

    def _stage(self, op: str, kind: str, obj: Any) -> None:
        staged = self._staged.get(kind)
        if staged is None:
            staged = self._staged[kind] = {}
        if kind in _UNIQUE_NAMES:
            self._index_staged_name(kind, staged.get(obj.id), None if op == "remove" else obj)
        staged[obj.id] = None if op == "remove" else obj
        self.actions.append((op, kind, obj))
        if kind == "task":
            self._index_staged_task(obj.id, None if op == "remove" else obj)

    def _index_staged_name(self, kind: str, prev: Any, obj: Any) -> None:
        """File a staged object under its name in place of its previous staged version (None: none, or removed
        here). Names are unique among the live objects (create and update check it), so a name maps to one id."""
        names = self._staged_names.get(kind)
        if names is None:
            names = self._staged_names[kind] = {}
        if prev is not None:
            key = name_of(prev).lower()
            if names.get(key) == prev.id:
                del names[key]
        if obj is not None:
            names[name_of(obj).lower()] = obj.id

    def _index_staged_task(self, tid: str, t: Task | None) -> None:
        prev = self._staged_task_keys.get(tid)
        key = (t.service_id, t.node_id) if t is not None else None
        if prev is not None and prev != key:
            self._staged_by_service[prev[0]].pop(tid, None)
            if prev[1]:
                self._staged_by_node[prev[1]].pop(tid, None)
        if t is None:
            self._staged_task_keys.pop(tid, None)
            return
        assert key is not None
        self._staged_task_keys[tid] = key
        self._staged_by_service.setdefault(t.service_id, {})[tid] = t
        if t.node_id:
            self._staged_by_node.setdefault(t.node_id, {})[tid] = t


class Subscription:
    def __init__(self, store: MemoryStore, kinds: frozenset[str] | None, limit: int) -> None:
        self._store = store
        self._kinds = kinds
        self._limit = limit
        self._buf: deque[WatchItem] = deque()
        self._wake = asyncio.Event()
        self.closed = False
        self.overflowed = False
        self.all_commits = False

    def _offer(self, items: list[WatchItem]) -> None:
        """Take one transaction's items, already filtered to this subscription's kinds."""
        if self.closed:
            return
        if len(self._buf) + len(items) > self._limit:
            self.overflowed = True
            self.close()
            return
        self._buf.extend(items)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._store._subs.discard(self)
        self._wake.set()

    async def get(self) -> WatchItem:
        while not self._buf:
            if self.closed:
                if self.overflowed:
                    raise WatchOverflow("watch fell behind and was closed")
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._buf.popleft()

    def drain(self) -> list[WatchItem]:
        """Everything buffered now, without waiting."""
        out = list(self._buf)
        self._buf.clear()
        return out

    def __aiter__(self) -> AsyncIterator[WatchItem]:
        return self

    async def __anext__(self) -> WatchItem:
        return await self.get()


class MemoryStore:
    def __init__(self, proposer: Proposer, clock: Clock) -> None:
        self._proposer = proposer
        self._clock = clock
        self._tables = _Tables()
        self._queue: list[tuple[Callable[[Tx], Any], asyncio.Future[Any], bool]] = []
        self._committer: asyncio.Task[None] | None = None
        self.stats = {"entries": 0, "transactions": 0, "commit_seconds": 0.0}  # group commit, for diagnostics
        self._subs: set[Subscription] = set()
        self._stages: list[Stage] = []
        self.version = 0
        self.applied_index = 0
        # The entry being proposed: its bytes, version, actions and each action's object encoding (None: a removal).
        self._pending: tuple[bytes, int, list[tuple[str, str, Any]], list[bytes | None]] | None = None

    @property
    def proposer(self) -> Proposer:
        return self._proposer

    async def wait_idle(self) -> None:
        """Return once no transaction is queued or being committed (for a watcher that batches over commits:
        no more are coming for now)."""
        while self._committer is not None and not self._committer.done():
            await asyncio.wait((self._committer,))

    def view(self) -> ReadTx:
        return ReadTx(self._tables)

    def add_stage(self, stage: Stage) -> Callable[[], None]:
        """Run `stage` after each transaction that wrote something, in the same transaction (see the module's
        docstring); returns the function that removes it. A stage that raises is rolled back alone (the
        transaction goes on without what it wrote)."""
        self._stages.append(stage)
        return lambda: self._stages.remove(stage) if stage in self._stages else None

    def _run_stages(self, tx: Tx, sp: int, undos: list[Callable[[], None]]) -> None:
        grew = False
        for stage in list(self._stages):
            ssp = tx.savepoint()
            try:
                undo = stage(tx, tx.actions[sp:])
            except Exception:
                tx.rollback(ssp)
                log.exception("a store stage failed; the transaction goes on without it")
                continue
            if undo is not None:
                undos.append(undo)
            grew |= tx.savepoint() > ssp
        if grew:
            tx.collapse(sp)

    async def update(self, fn: Callable[[Tx], T], *, verify: bool = False) -> T:
        """Run `fn` as a transaction and return its result once its changes are committed.

        What a transaction writes must be storable: a float that is not finite, or a change larger than
        MAX_OBJECT_BYTES encoded, fails it (InvalidArgument) before anything is proposed. `verify` (for changes made
        of a client's values: the control API) also decodes the encoded change and compares it with what was
        written, so nothing enters the log that a replica would replay differently or not at all; the codec's
        property test covers the objects Shoal's own loops write, which would pay for it on every task change.

        Group commit: while one entry is being committed, the transactions that arrive queue up; the next
        entry carries all of them, run one after the other on one `Tx` (each sees the ones before it, exactly
        as if they had run in sequence; one that raises is rolled back to where it started and gets its
        exception alone). So concurrent writers share a log entry and its fsync and replication round, and
        the version the batch stamps is still the one it commits with."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((fn, fut, verify))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_queued(), name="store-commit")
        result: T = await fut
        return result

    async def _commit_queued(self) -> None:
        try:
            await self._drain()
        except BaseException as e:
            self._fail_queue(e)
            raise

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            tx = Tx(self._tables, self.version + 1, self._clock.now())
            done: list[tuple[asyncio.Future[Any], Any]] = []
            undos: list[Callable[[], None]] = []  # the stages' bookkeeping, taken back if the entry fails
            parts: list[bytes] = []  # each transaction's actions, encoded and checked
            encs: list[bytes | None] = []  # each action's object encoding, in the order of tx.actions
            size = 0
            for k, (fn, fut, check) in enumerate(batch):
                if size >= MAX_ENTRY_BYTES:  # the entry is full: the rest go into the next one, not yet run
                    self._queue[:0] = batch[k:]
                    break
                sp = tx.savepoint()
                mine: list[Callable[[], None]] = []
                try:
                    result = fn(tx)
                    if self._stages and tx.savepoint() > sp:
                        self._run_stages(tx, sp, mine)
                    part, objs = encode_action_parts(tx.actions[sp:], verify=check)
                except BaseException as e:  # this transaction alone fails; the others of the batch go on
                    tx.rollback(sp)
                    _undo(mine)
                    if not fut.done():
                        fut.set_exception(e)
                    continue
                undos.extend(mine)
                done.append((fut, result))
                encs.extend(objs)
                if part:
                    parts.append(part)
                    size += len(part)
            if tx.actions:
                entry = _entry_bytes(tx.version, parts)
                # The entry's own objects, so applying it here needs no decoding (followers decode).
                self._pending = (entry, tx.version, tx.actions, encs)
                t0 = time.perf_counter()
                try:
                    index = await self._proposer.propose(entry)
                    self.stats["entries"] += 1
                    self.stats["transactions"] += len(done)
                    self.stats["commit_seconds"] += time.perf_counter() - t0
                    # A replicated proposer applies through apply_entry as the entry commits; the local one
                    # returns before applying, so apply here unless it already happened.
                    if self.applied_index < index:
                        self.apply_entry(index, entry)
                except BaseException as e:
                    _undo(undos)
                    for f, _ in done:
                        if not f.done():
                            f.set_exception(fresh(e))
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    continue
                finally:
                    self._pending = None
            for f, result in done:
                if not f.done():
                    f.set_result(result)

    def _fail_queue(self, e: BaseException) -> None:
        queued, self._queue = self._queue, []
        for _, f, _v in queued:
            if not f.done():
                f.set_exception(ShoalError(f"the store stopped before the transaction ran: {e!r}"))

    def apply_entry(self, index: int, data: bytes) -> None:
        """Apply one committed log entry (leader and followers alike)."""
        pending = self._pending
        encs: list[bytes | None] | None = None
        if pending is not None and pending[0] is data:
            version, actions, encs = pending[1], pending[2], pending[3]
        else:
            version, actions = decode_entry(data)
        events: list[WatchItem] = []
        tables = self._tables
        for i, (op, kind, obj) in enumerate(actions):
            if op == "remove":
                old = tables.pop(kind, obj.id)
                events.append(Event("remove", kind, old if old is not None else obj))
            else:
                old = tables.put(kind, obj, encs[i] if encs is not None else None)
                events.append(Event("create" if old is None else "update", kind, obj, old))
        self.version = max(self.version, version)
        self.applied_index = index
        commit = Commit(self.version)
        # Filtered once per distinct set of kinds, not once per subscriber and item. A subscription hears of a
        # commit only if it touched one of its kinds (unless it asked for every commit): with a dozen loops
        # watching, waking them all for every unrelated write was a visible part of the write path.
        filtered: dict[frozenset[str] | None, list[WatchItem]] = {}
        just_commit: list[WatchItem] = [commit]
        for sub in list(self._subs):
            kinds = sub._kinds
            items = filtered.get(kinds)
            if items is None:
                items = events if kinds is None else [e for e in events if e.kind in kinds]  # type: ignore[union-attr]
                items = filtered[kinds] = [*items, commit] if items else []
            if items:
                sub._offer(items)
            elif sub.all_commits:
                sub._offer(just_commit)

    def watch(self, kinds: Iterable[str] | None = None, limit: int = 100_000, *,
              all_commits: bool = False) -> Subscription:
        """Events of these kinds (all: None) after each commit that has some, then its `Commit` marker;
        `all_commits`: the marker of every commit too, to follow the store's version."""
        sub = Subscription(self, frozenset(kinds) if kinds is not None else None, limit)
        sub.all_commits = all_commits
        self._subs.add(sub)
        return sub

    def view_and_watch(self, fn: Callable[[ReadTx], T], kinds: Iterable[str] | None = None,
                       limit: int = 100_000, *, all_commits: bool = False) -> tuple[T, Subscription]:
        # Synchronous: no commit can land between the read and the subscription.
        return fn(self.view()), self.watch(kinds, limit, all_commits=all_commits)

    # --- snapshots ---------------------------------------------------------------------------------

    def save(self) -> bytes:
        return self.snapshot_source()()

    def snapshot_source(self) -> Callable[[], bytes]:
        """The state now, as a function that encodes it: the tables are copied here (cheap: the objects are
        frozen and shared), the encoding (the expensive part) can run later, in another thread."""
        version = self.version
        objects = {k: list(objs.values()) for k, objs in self._tables.objs.items()}
        encoded = {k: dict(e) for k, e in self._tables.enc.items()}  # bytes are immutable: shared, not copied

        def encode_all() -> bytes:
            # The objects' encodings from their log entries where the store kept them, the others encoded now;
            # the same document as `_dumps({"format", "version", "objects": {kind: [encoded objects]}})`, put
            # together with one join (a store of 100,000 tasks is some 60 MB: each copy of it counts).
            out = [b'{"format":%d,"version":%d,"objects":{' % (ENTRY_FORMAT, version)]
            append = out.append
            for n, (k, objs) in enumerate(objects.items()):
                append(b'%s"%s":[' % (b"," if n else b"", k.encode()))
                have = encoded[k]
                for i, o in enumerate(objs):
                    if i:
                        append(b",")
                    append(have.get(o.id) or _dumps(encode(o)))
                append(b"]")
            append(b"}}")
            return b"".join(out)

        return encode_all

    def restore(self, data: bytes, index: int) -> None:
        body = _loads(data)
        tables = _Tables()
        for kind, objs in body["objects"].items():
            cls = KINDS.get(kind)
            if cls is None:
                continue  # a kind from a newer version: skipped, not fatal
            for raw in objs:
                tables.put(kind, decode_as(cls, raw))
        self._tables = tables
        self.version = int(body["version"])
        self.applied_index = index
        for sub in list(self._subs):
            sub.close()


def _undo(undos: list[Callable[[], None]]) -> None:
    for u in undos:
        try:
            u()
        except Exception:
            log.exception("taking back a store stage's decisions failed")


def _dumps(body: Any) -> bytes:
    """Compact JSON. orjson is ~10x faster than the json module on the write path; what it refuses
    (integers beyond 64 bits, non-string keys in a pass-through value) goes through json as before."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, separators=(",", ":")).encode()


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # NaN or Infinity, which json wrote and orjson does not read
        return json.loads(data)


class ObjectTooLarge(InvalidArgument):
    pass


class TransactionTooLarge(InvalidArgument):
    pass


def encode_actions(actions: list[tuple[str, str, Any]], *, verify: bool = True) -> bytes:
    """One transaction's actions as they go into a log entry (the members of its "actions" array, comma
    separated). A value the codec cannot hold raises Unencodable, an object too large ObjectTooLarge; `verify`:
    also proven to be what a replica replaying them decodes (equal objects, nothing lost), else Unencodable."""
    return encode_action_parts(actions, verify=verify)[0]


def encode_action_parts(actions: list[tuple[str, str, Any]], *,
                        verify: bool = True) -> tuple[bytes, list[bytes | None]]:
    """`encode_actions`, and each action's object encoding (None for a removal), which the store keeps so that
    a snapshot need not encode the object again."""
    if not actions:
        return b"", []
    parts: list[bytes] = []
    objs: list[bytes | None] = []
    for op, kind, obj in actions:
        data = _dumps(encode(obj))
        if len(data) > MAX_OBJECT_BYTES:
            raise ObjectTooLarge(
                f"rpc error: code = InvalidArgument desc = {kind} {name_of(obj) or obj.id} is too large for "
                f"the cluster store: {len(data)} bytes encoded, at most {MAX_OBJECT_BYTES}")
        parts.append(b'{"op":"%s","kind":"%s","obj":%s}' % (op.encode(), kind.encode(), data))
        objs.append(None if op == "remove" else data)
    joined = b",".join(parts)
    if len(joined) > MAX_TRANSACTION_BYTES:
        raise TransactionTooLarge(
            f"rpc error: code = InvalidArgument desc = transaction is too large for the cluster store: "
            f"{len(joined)} bytes encoded ({len(actions)} changes), at most {MAX_TRANSACTION_BYTES}")
    if not verify:
        return joined, objs
    try:
        back = _loads(b"[%s]" % joined)
        same = len(back) == len(actions) and all(
            a["op"] == op and a["kind"] == kind and decode_as(KINDS[kind], a["obj"]) == obj
            for a, (op, kind, obj) in zip(back, actions, strict=True))
    except Exception as e:  # the decoder refused it: exactly what would stop a follower
        raise Unencodable(f"invalid value: the change cannot be stored in the cluster's log ({e!r})") from None
    if not same:
        raise Unencodable("invalid value: the change does not read back from the cluster's log as it was written")
    return joined, objs


def _entry_bytes(version: int, parts: list[bytes]) -> bytes:
    return b'{"format":%d,"version":%d,"actions":[%s]}' % (ENTRY_FORMAT, version, b",".join(parts))


def encode_entry(version: int, actions: list[tuple[str, str, Any]]) -> bytes:
    body = {
        "format": ENTRY_FORMAT,
        "version": version,
        "actions": [{"op": op, "kind": kind, "obj": encode(obj)} for op, kind, obj in actions],
    }
    return _dumps(body)


def decode_entry(data: bytes) -> tuple[int, list[tuple[str, str, Any]]]:
    body = _loads(data)
    out: list[tuple[str, str, Any]] = []
    for a in body["actions"]:
        cls = KINDS.get(a["kind"])
        if cls is None:
            continue
        out.append((a["op"], a["kind"], decode_as(cls, a["obj"])))
    return int(body["version"]), out
