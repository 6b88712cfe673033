"""`RaftNode`: the asyncio shell around `RaftCore`, and the store's `Proposer` for a replicated manager.

    node = RaftNode(raft_id, SqliteStorage(dir), transport, clock, snapshot_interval=10_000)
    store = MemoryStore(node, clock)
    node.attach(store)                # the state machine: apply_entry / save / restore
    node.add_leadership_listener(cb)  # cb(True) once leader *and* caught up; cb(False) on step-down
    await node.start()
    ...
    await store.update(fn)            # -> node.propose(entry): index once committed and applied here
    await node.read_barrier()         # linearizable read point (read index), then read store.view()
    await node.stop()

One task ticks the core every `tick_interval` on the injected clock; another drains `ready()` each time
something happened (tick, message, proposal, read). Each Ready is handled in the order the core demands:
persist (storage writes, one fsync when it `must_sync`), then send, then install a received snapshot into the
state machine (`restore`), apply committed entries (`apply_entry`; the leader's empty entry and membership entries are
not the store's), hand out read states, `advance`. Every `snapshot_interval` applied entries, or sooner once
`snapshot_bytes` of entries were applied (large entries), but not before half the last snapshot's size was
applied (a large store is costly to encode), the state machine is saved and the log compacted
(`core.compact` + `storage.save_snapshot`), keeping a catch-up tail of at most `catchup_entries` entries and
`catchup_bytes` bytes below the snapshot for followers slightly behind: the log in memory and on disk, and what a
restart replays (entries after the snapshot only), stay bounded by these whatever the history's length.

Proposals are futures keyed by log index: resolved with the index when the entry committed at that index
has the proposal's term, failed with `ProposalLost` when it has another term, when a snapshot covering it
is installed (outcome unknown), or when this node stops being the leader (outcome unknown: the entry may
still commit under the next leader; the store converges either way since it applies what commits).
A failure of the Ready loop (storage cannot be written, an entry cannot be applied) or of a snapshot write stops
the node for good: waiters fail, leadership ends, and `on_failure(exc)` is called once (a manager exits
non-zero there, `exit_process`, for its supervisor to restart it: docs/design/managers.md).
Storage writes are synchronous on the event loop (sqlite with one fsync per Ready that must sync): simple and,
under a virtual clock, deterministic. Two options move the fsync (not the writes) to a worker thread:
`parallel_leader_write` (the daemon's) on a leader whose Ready has entries to send, so that its appends leave
before its own fsync and the followers store them while it does (etcd/raft's parallel leader write: the core
counts the leader's own entries toward a commit only once `advance` says they are durable, so an entry still
commits only when stored on a majority); `persist_in_thread` for every Ready that must sync.

`commit_broadcast_delay` (the daemon's): a new commit index goes to the followers in an append of its own only that
long after it moved, and only to those that no append told of it meanwhile (`RaftCore.broadcast_commit`); with
writes coming one after the other, the next write's append carries it, and the writer's answer leaves first.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import random
import sqlite3
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar

from shoal.clock import Clock
from shoal.errors import Unavailable, fresh
from shoal.manager.raft import (
    DEFAULT_CATCHUP_BYTES,
    DEFAULT_CATCHUP_ENTRIES,
    DEFAULT_SNAPSHOT_BYTES,
    DEFAULT_TICK,
    forked,
)
from shoal.manager.raft.core import (
    ConfChange,
    EntryId,
    EntryType,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
)
from shoal.manager.raft.storage import Storage, persist_ready, write_ready
from shoal.manager.raft.transport import Transport
from shoal.tasks import cancel_all, cancel_and_wait

log = logging.getLogger(__name__)

# A leader asks its followers to wait, beyond their election timeout, twice the worst stall of its event loop in
# the last minute (up to the node's `max_slack`): a loop that stalled once for 2 s under load may again.
SLACK_FACTOR = 2.0
SLACK_WINDOW = 60.0

T = TypeVar("T")


_LEADER_EARLY = frozenset({MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT})


class StateMachine(Protocol):
    """What the node applies to (`shoal.store.memory.MemoryStore` is one)."""

    def apply_entry(self, index: int, data: bytes) -> None: ...

    def save(self) -> bytes: ...

    def snapshot_source(self) -> Callable[[], bytes]: ...

    def restore(self, data: bytes, index: int) -> None: ...


EXIT_STORAGE_FAILED = 1  # a manager whose Raft storage failed exits with this (dockerd's fatal errors too)


def exit_process(e: BaseException) -> None:
    """`RaftNode.on_failure` of a manager: exit non-zero now, for its supervisor (systemd, a restart policy) to
    start it again. Crash-only on purpose: the storage is built to survive `kill -9`, and a graceful stop could
    itself need the disk that failed. Restarted once it can write again, it catches up from the others."""
    what = "storage failed" if isinstance(e, (OSError, sqlite3.Error)) else "node failed"
    log.critical("the manager's Raft %s (%s): exiting with status %d so that its supervisor restarts it",
                 what, e, EXIT_STORAGE_FAILED)
    logging.shutdown()
    os._exit(EXIT_STORAGE_FAILED)


class NotLeaderError(Unavailable):
    """This manager is not the leader; `leader` is the raft id of the one it knows (0: none known)."""

    def __init__(self, leader: int) -> None:
        hint = f"the leader is manager {leader}" if leader else "no leader is known"
        super().__init__(f"this node is not the swarm leader ({hint})")
        self.leader = leader


class ProposalLost(Unavailable):
    """The proposal did not commit, or its fate is unknown (leadership changed); the caller may retry."""


class RaftNode:
    def __init__(self, raft_id: int, storage: Storage, transport: Transport, clock: Clock, *,
                 tick_interval: float = DEFAULT_TICK, election_ticks: int = 10, heartbeat_ticks: int = 1,
                 snapshot_interval: int = 10_000, read_timeout: float | None = None,
                 rng: random.Random | None = None,
                 on_conf_change: Callable[[int, ConfChange], None] | None = None,
                 persist_in_thread: bool = False, parallel_leader_write: bool = False, commit_broadcast: bool = True,
                 commit_broadcast_delay: float = 0.0,
                 election_jitter_ticks: int | None = None,
                 snapshot_in_thread: bool = False, snapshot_in_child: bool = False, max_slack: float = 0.0,
                 snapshot_bytes: int = DEFAULT_SNAPSHOT_BYTES,
                 catchup_entries: int = DEFAULT_CATCHUP_ENTRIES, catchup_bytes: int = DEFAULT_CATCHUP_BYTES,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.id = raft_id
        self.storage = storage
        self.transport = transport
        self.clock = clock
        self.tick_interval = tick_interval
        self.snapshot_interval = snapshot_interval
        self.snapshot_bytes = snapshot_bytes
        # Off the loop, encode in a forked child (shoal.manager.raft.forked) rather than a thread of this process.
        self.snapshot_in_child = snapshot_in_child
        self.catchup_entries = catchup_entries
        self.catchup_bytes = catchup_bytes
        self._applied_bytes = 0  # entry bytes applied since the last snapshot (taken or installed)
        # This node's stalls of the last SLACK_WINDOW seconds (when, how late a tick came): leading, it asks its
        # followers for SLACK_FACTOR times the worst as slack, up to `max_slack` seconds (0: none).
        self._stalls: deque[tuple[float, float]] = deque()
        # A forwarded read is silently lost on leader change: give up after two election timeouts.
        self.read_timeout = read_timeout if read_timeout is not None else 4 * election_ticks * tick_interval
        self.core = RaftCore(RaftConfig(id=raft_id, election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks,
                                        election_jitter_ticks=election_jitter_ticks,
                                        max_slack_ticks=round(max_slack / tick_interval),
                                        commit_broadcast=commit_broadcast and commit_broadcast_delay <= 0),
                             storage,
                             rng or random.Random())
        self.on_conf_change = on_conf_change
        # Called once when the Ready loop fails (its storage cannot be written, an entry cannot be applied):
        # the node has stopped and cannot go on. A manager exits non-zero there (`exit_process`).
        self.on_failure = on_failure
        self.failure: BaseException | None = None
        # The fsync in a worker thread: for every Ready (persist_in_thread), or for a leader's Readies with entries
        # while its appends go out (parallel_leader_write, the daemon's); off, everything runs on the loop
        # (deterministic under virtual time).
        self.persist_in_thread = persist_in_thread
        self.parallel_leader_write = parallel_leader_write
        self._sent_early: tuple[Message, ...] = ()
        self._syncing: asyncio.Future[None] | None = None  # an fsync running in a worker thread
        self._snapshotting: asyncio.Task[None] | None = None
        # Snapshots encoded and written in a worker thread (the daemon); off: on the loop, deterministic.
        self.snapshot_in_thread = snapshot_in_thread
        self._storage_lock = asyncio.Lock()
        self._sm: StateMachine | None = None
        self._wake = asyncio.Event()
        self._parked = False  # the Ready loop waits for `_wake`, between Readies
        # With a delay (and commit_broadcast), the core broadcasts no commit index itself: the leader tells the
        # followers a new one that long after it moved, those that no append (the next write's) told meanwhile.
        self.commit_broadcast_delay = commit_broadcast_delay if commit_broadcast else 0.0
        self._commit_due = asyncio.Event()
        self._applied_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._proposals: dict[int, tuple[int, asyncio.Future[int]]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._read_waiting: list[tuple[int, bytes]] = []  # read states not yet applied
        self._read_seq = itertools.count(1)
        self._listeners: list[Callable[[bool], None]] = []
        self.leader_event = asyncio.Event()  # set while this node is a caught-up leader
        self.is_leader = False
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        # For the metrics: the size of the last snapshot taken or installed, how often the leader this node knows
        # changed to another member, and `on_timing(what, seconds)` with each proposal's time to commit and apply
        # ("proposal") and each snapshot's time to encode and write ("snapshot").
        self.last_snapshot_bytes = 0
        self.leader_changes = 0
        self._known_leader = 0
        self.on_timing: Callable[[str, float], None] | None = None

    # --- wiring ------------------------------------------------------------------------------------

    def attach(self, sm: StateMachine) -> None:
        self._sm = sm

    def add_leadership_listener(self, cb: Callable[[bool], None]) -> None:
        """`cb(True)` when this node leads and has applied an entry of its own term (its store is complete:
        start the leader-only loops); `cb(False)` when it stops leading (stop them)."""
        self._listeners.append(cb)

    @property
    def leader(self) -> int:
        """The raft id of the leader as this node knows it (0: unknown)."""
        return self.core.leader

    @property
    def applied(self) -> int:
        return self.core.applied

    @property
    def voters(self) -> frozenset[int]:
        return self.core.voters

    @property
    def election_timeout(self) -> float:
        """Seconds without a leader's word after which a follower campaigns (the lower bound)."""
        return self.core.cfg.election_ticks * self.tick_interval

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to `target` (catch it up, then it campaigns at once); raises if this node cannot."""
        try:
            self.core.transfer_leader(target)
        except NotLeader as e:
            raise NotLeaderError(e.leader) from None
        except ProposalDropped as e:
            raise Unavailable(str(e)) from None
        self._wake.set()

    async def wait_applied(self, index: int) -> None:
        """Until this node's state machine has applied `index` (e.g. the commit index loaded at start)."""
        while self.core.applied < index:
            if not self._running:
                raise Unavailable("raft node is not running")
            self._applied_wake.clear()
            await self._applied_wake.wait()

    def following(self, member: int, within: float) -> bool:
        """On the leader: has `member` taken entries (or been level with us) in the last `within` seconds?"""
        return self.core.following(member, max(1, round(within / self.tick_interval)))

    def status(self) -> dict[str, object]:
        return self.core.status()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._sm is None:
            raise RuntimeError("RaftNode.attach(state_machine) before start()")
        if self.core.snapshot_meta.index > 0:
            snap = self.storage.load_snapshot()  # read for the restore only: neither the core nor storage keeps it
            assert snap is not None and snap.meta == self.core.snapshot_meta
            self._sm.restore(snap.data, snap.meta.index)
            del snap
        self._running = True
        self.transport.set_receiver(self.step)
        if self.core.voters == frozenset({self.id}):
            # The only voter: nobody else can lead, so do not wait an election timeout to find that out.
            self.core.campaign()
        self._tasks = [asyncio.create_task(self._ticker(), name=f"raft-{self.id}-tick"),
                       asyncio.create_task(self._run(), name=f"raft-{self.id}-ready")]
        if self.commit_broadcast_delay > 0:
            self._tasks.append(asyncio.create_task(self._commit_broadcaster(), name=f"raft-{self.id}-commit"))
        self._wake.set()  # committed entries loaded from storage are replayed by the first Ready

    async def stop(self) -> None:
        """Stop ticking and handling messages (the storage stays open: the caller closes it)."""
        self._running = False
        self.transport.set_receiver(None)
        if self._snapshotting is not None:
            await cancel_and_wait(self._snapshotting)  # storage is closed after stop: not mid-write
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            # The thread goes on when the Ready loop is cancelled: the storage is closed after stop, not mid-fsync.
            await asyncio.wait([syncing])
            if not syncing.cancelled():
                syncing.exception()  # retrieved: a failed fsync of a stopped node is not logged again
        self._fail_all(ProposalLost("raft node stopped"), Unavailable("raft node stopped"))
        self._applied_wake.set()
        self._set_leader(False)

    # --- inputs ------------------------------------------------------------------------------------

    def step(self, msg: Message) -> None:
        """A message from a peer (the transport's receiver)."""
        if not self._running:
            return
        self.core.step(msg)
        self._wake.set()

    def ready_now(self) -> None:
        """Handle the next Ready here, in the caller's turn of the loop, if the Ready loop is idle and the Ready
        is one it would handle on the loop; otherwise leave it to the Ready loop (already woken). A transport calls
        this once it has stepped what one batch from a peer carried: a follower stores and answers an append, a
        leader commits and answers the writers, without waiting for the Ready loop's turn, which behind a busy
        loop's other callbacks was a visible part of a write's latency."""
        if not (self._running and self._parked) or not self.core.has_ready():
            return
        if self.persist_in_thread or (self.parallel_leader_write and self.core.role == Role.LEADER
                                      and self.core.has_unstable_entries):
            return  # its fsync may go to a worker thread: the Ready loop's
        try:
            self._handle_ready(self.core.ready())
        except Exception as e:  # as in the Ready loop: this node cannot go on
            self._failed(e, "ready loop failed")
            return
        if not self.core.has_ready():
            self._wake.clear()

    def report_unreachable(self, node: int) -> None:
        self.core.report_unreachable(node)
        self._wake.set()

    def report_snapshot(self, node: int, ok: bool) -> None:
        self.core.report_snapshot(node, ok)
        self._wake.set()

    async def propose(self, entry: bytes) -> int:
        """The store's Proposer: the entry's index once it is committed and applied on this node."""
        return await self._propose(lambda: self.core.propose(entry))

    async def propose_conf_change(self, cc: ConfChange) -> int:
        """Add or remove one voter; the index once the change committed (it is then in effect)."""
        return await self._propose(lambda: self.core.propose_conf_change(cc))

    async def _propose(self, do: Callable[[], EntryId]) -> int:
        if not self._running:
            raise Unavailable("raft node is not running")
        try:
            eid = do()
        except NotLeader as e:
            raise NotLeaderError(e.leader) from None
        except ProposalDropped as e:
            raise Unavailable(str(e)) from e
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._proposals[eid.index] = (eid.term, fut)
        self._wake.set()
        if self.on_timing is None:
            return await fut
        t0 = self.clock.monotonic()
        index = await fut
        self.on_timing("proposal", self.clock.monotonic() - t0)
        return index

    async def read_barrier(self, timeout: float | None = None) -> int:
        """Wait until this node's state machine reflects every write committed before the call (read index:
        the leader confirms its leadership with a heartbeat round); returns the read index."""
        if not self._running:
            raise Unavailable("raft node is not running")
        ctx = f"{self.id}:{next(self._read_seq)}".encode()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        try:
            try:
                self.core.read_index(ctx)
            except NotLeader as e:
                raise NotLeaderError(e.leader) from None
            self._wake.set()
            return await self._wait(fut, self.read_timeout if timeout is None else timeout)
        finally:
            self._reads.pop(ctx, None)

    async def _wait(self, fut: asyncio.Future[T], timeout: float) -> T:
        sleeper: asyncio.Future[None] = asyncio.ensure_future(self.clock.sleep(timeout))
        waiters: set[asyncio.Future[object]] = {fut, sleeper}  # type: ignore[arg-type]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
        if fut.done():
            return fut.result()
        fut.cancel()
        raise Unavailable("raft: read barrier timed out (no leader reachable?)")

    # --- the loops ---------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            t0 = self.clock.monotonic()
            await self.clock.sleep(self.tick_interval)
            # A tick this late means the loop (or the process: a collection, descheduling) stalled; on the leader
            # a stall near the election timeout lets the followers elect another one. Said so that an election
            # under load can be told from a dead or unreachable leader.
            late = self.clock.monotonic() - t0 - self.tick_interval
            if late >= self.election_timeout / 2:
                log.warning("raft node %d: the event loop was stalled for %.0f ms (the election timeout is %.0f ms)",
                            self.id, late * 1000, self.election_timeout * 1000)
            self._note_stall(late)
            self.core.tick()
            self._wake.set()

    async def _commit_broadcaster(self) -> None:
        """`commit_broadcast_delay` after a commit index moved, the followers no append told of it are told."""
        while True:
            await self._commit_due.wait()
            await self.clock.sleep(self.commit_broadcast_delay)
            self._commit_due.clear()
            if self.core.broadcast_commit():
                self._wake.set()

    def _note_stall(self, late: float) -> None:
        """The slack this node asks of the others (of its followers while it leads, of its leader while it
        follows): a loop that stalled for 2 s a minute ago may do so again, and that is not a death. Stalls under
        half an election timeout are not counted."""
        now = self.clock.monotonic()
        if late >= self.election_timeout / 2:  # shorter ones cost no election: failover stays as fast
            self._stalls.append((now, late))
        while self._stalls and self._stalls[0][0] < now - SLACK_WINDOW:
            self._stalls.popleft()
        worst = max((x for _, x in self._stalls), default=0.0)
        self.core.slack = math.ceil(SLACK_FACTOR * worst / self.tick_interval)

    async def _run(self) -> None:
        try:
            while True:
                self._parked = True  # between Readies: `ready_now` may handle one meanwhile
                await self._wake.wait()
                self._parked = False
                self._wake.clear()
                while self.core.has_ready():
                    rd = self.core.ready()
                    if rd.must_sync and (self.persist_in_thread or (
                            self.parallel_leader_write and rd.entries and self.core.role == Role.LEADER
                            and any(m.type in _LEADER_EARLY for m in rd.messages))):
                        await self._persist_off_loop(rd)
                        self._handle_ready(rd, persisted=True)
                    else:
                        self._handle_ready(rd)
                    # Let the ticker and the transport run between Readys: one holds at most
                    # max_committed_bytes_per_ready of entries to apply, a backlog is many.
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a storage failure: this node cannot go on (as if it crashed)
            self._failed(e, "ready loop failed")

    def _failed(self, e: BaseException, what: str) -> None:
        """The node cannot go on (its storage failed, or the state machine refused an entry): it stops taking
        messages and proposals, fails what waits, and `on_failure` decides what becomes of the process."""
        log.error("raft node %d: %s: %s", self.id, what, e, exc_info=e)
        self._running = False
        self.failure = e
        self.transport.set_receiver(None)
        self._fail_all(ProposalLost(f"raft node failed: {e}"), Unavailable(f"raft node failed: {e}"))
        self._applied_wake.set()
        self._set_leader(False)
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        if self.on_failure is not None:
            self.on_failure(e)

    async def _persist_off_loop(self, rd: Ready) -> None:
        """The fsync in a worker thread, so the loop goes on taking requests (they batch into the next entry)
        and messages in meanwhile. A leader's appends and heartbeats leave before its own fsync (etcd's
        parallel write: the core counts the leader's entries only once `advance` says they are durable);
        every other message waits for it (a vote or an append answer must never outrun the disk). The writes
        themselves are made here on the loop (sqlite keeps them in its cache until the commit): the thread only
        waits for the disk, and needs the interpreter (the GIL, which a busy loop holds for up to the switch
        interval at a time) only to start and to end."""
        if self.core.role == Role.LEADER and rd.messages:
            early = tuple(m for m in rd.messages if m.type in _LEADER_EARLY)
            if early:
                self.transport.send(early)
                self._sent_early = early
        async with self._storage_lock:  # one thread at a time on the sqlite connection
            write_ready(self.storage, rd)
            self._syncing = asyncio.ensure_future(asyncio.to_thread(self.storage.sync))
            await asyncio.shield(self._syncing)
            self._syncing = None

    def _handle_ready(self, rd: Ready, *, persisted: bool = False) -> None:
        sm = self._sm
        assert sm is not None
        if not persisted:
            persist_ready(self.storage, rd)  # durable before any message leaves
        early, self._sent_early = self._sent_early, ()
        if early:
            rest = tuple(m for m in rd.messages if not any(m is e for e in early))
            if rest:
                self.transport.send(rest)
        elif rd.messages:
            self.transport.send(rd.messages)
        if rd.snapshot is not None:
            snap = rd.snapshot
            sm.restore(snap.data, snap.meta.index)
            self.snapshots_installed += 1
            self.last_snapshot_bytes = len(snap.data)
            self._applied_bytes = 0
            for index in [i for i in self._proposals if i <= snap.meta.index]:
                _, fut = self._proposals.pop(index)
                if not fut.done():
                    fut.set_exception(ProposalLost("raft: replaced by a snapshot; outcome unknown"))
        for e in rd.committed_entries:
            self._applied_bytes += e.size()
            if e.type == EntryType.NORMAL:
                if e.data:
                    sm.apply_entry(e.index, e.data)
            elif self.on_conf_change is not None:
                self.on_conf_change(e.index, ConfChange.decode(e.data))
            pending = self._proposals.pop(e.index, None)
            if pending is not None and not pending[1].done():
                if pending[0] == e.term:
                    pending[1].set_result(e.index)
                else:
                    pending[1].set_exception(ProposalLost("raft: proposal lost to a leadership change"))
        self._read_waiting.extend((rs.index, rs.context) for rs in rd.read_states)
        self.core.advance(rd)
        if self.core.leader and self.core.leader != self._known_leader:
            self._known_leader = self.core.leader
            self.leader_changes += 1
        if rd.committed_entries or rd.snapshot is not None:
            self._applied_wake.set()
        self._serve_reads()
        if self.core.role != Role.LEADER and self._proposals:
            self._fail_all(ProposalLost("raft: leadership lost; the proposal may or may not commit"), None)
        if self.core.role != Role.LEADER and self.is_leader:
            # A leader's queued reads are dropped by the core when it steps down: fail them now.
            for fut in self._reads.values():
                if not fut.done():
                    fut.set_exception(NotLeaderError(self.core.leader))
        self._set_leader(self.core.role == Role.LEADER
                         and self.core.log_term(self.core.applied) == self.core.term)
        if self.commit_broadcast_delay > 0 and self.core.commit_unsent:
            self._commit_due.set()
        self._maybe_snapshot()

    def _serve_reads(self) -> None:
        if not self._read_waiting:
            return
        keep: list[tuple[int, bytes]] = []
        for index, ctx in self._read_waiting:
            if index <= self.core.applied:
                fut = self._reads.get(ctx)
                if fut is not None and not fut.done():
                    fut.set_result(index)
            else:
                keep.append((index, ctx))
        self._read_waiting = keep

    def _maybe_snapshot(self) -> None:
        applied = self.core.applied
        if self._snapshotting is not None or applied <= self.core.snapshot_meta.index:
            return
        entries = applied - self.core.snapshot_meta.index
        if entries < self.snapshot_interval and self._applied_bytes < self.snapshot_bytes:
            return
        # Amortized: a snapshot encodes the whole store, so a large store is not encoded again before half its
        # size was written to the log since (or many intervals passed): placing 100,000 tasks encoded a store of
        # 100 MB every 32 MB of log, most of the managers' work, each time for seconds.
        if self._applied_bytes < self.last_snapshot_bytes // 2 and entries < 8 * self.snapshot_interval:
            return
        sm = self._sm
        assert sm is not None
        self._applied_bytes = 0
        if not self.snapshot_in_thread:
            t0 = self.clock.monotonic()
            data = sm.save()
            snap = self.core.compact(applied, data, keep_entries=self.catchup_entries, keep_bytes=self.catchup_bytes)
            self.storage.save_snapshot(snap, compact_index=self.core.first_index - 1)
            self.storage.sync()
            self._snapshot_taken(len(data), self.clock.monotonic() - t0)
            return
        # A big store takes seconds to encode: encode and write it in a thread while the loop keeps
        # heartbeating (a leader stalled for an election timeout would be deposed), then commit it here.
        self._snapshotting = asyncio.get_running_loop().create_task(self._snapshot_off_loop(applied,
                                                                                            sm.snapshot_source()))

    def _snapshot_taken(self, size: int, seconds: float) -> None:
        self.snapshots_taken += 1
        self.last_snapshot_bytes = size
        if self.on_timing is not None:
            self.on_timing("snapshot", seconds)

    async def _snapshot_off_loop(self, index: int, source: Callable[[], bytes]) -> None:
        t0 = self.clock.monotonic()
        try:
            data = await self._encode_off_loop(source)
        except Exception:
            log.exception("raft node %d: encoding a snapshot at %d failed", self.id, index)
            self._snapshotting = None
            return
        try:
            if index <= self.core.snapshot_meta.index:
                return  # a snapshot from the leader got there first
            snap = self.core.compact(index, data, keep_entries=self.catchup_entries, keep_bytes=self.catchup_bytes)
            cut = self.core.first_index - 1  # now: a snapshot from the leader may replace the log meanwhile
            write = getattr(self.storage, "write_snapshot_file", None)
            if write is not None:
                await asyncio.to_thread(write, snap)  # the file only: the database is not touched there
            async with self._storage_lock:
                if write is not None:
                    self.storage.save_snapshot(snap, written=True, compact_index=cut)  # type: ignore[call-arg]
                else:
                    self.storage.save_snapshot(snap, compact_index=cut)
                self.storage.sync()
            self._snapshot_taken(len(data), self.clock.monotonic() - t0)
        except Exception as e:
            # The log was compacted in memory and the storage may be mid-transaction: as a failed Ready write,
            # this node cannot go on.
            self._snapshotting = None
            self._failed(e, f"writing a snapshot at {index} failed")
        finally:
            self._snapshotting = None

    async def _encode_off_loop(self, source: Callable[[], bytes]) -> bytes:
        if self.snapshot_in_child:
            try:
                return await forked.encode_in_child(source)
            except forked.ChildFailed as e:
                log.warning("raft node %d: encoding a snapshot in a child failed (%s); encoding it in a thread",
                            self.id, e)
        return await asyncio.to_thread(source)

    def _fail_all(self, proposal_exc: Exception, read_exc: Exception | None) -> None:
        proposals, self._proposals = self._proposals, {}
        for _, fut in proposals.values():
            if not fut.done():
                fut.set_exception(fresh(proposal_exc))
        if read_exc is not None:
            for fut in self._reads.values():
                if not fut.done():
                    fut.set_exception(fresh(read_exc))
            self._read_waiting = []

    def _set_leader(self, is_leader: bool) -> None:
        if is_leader == self.is_leader:
            return
        # Leadership changes are rare in a healthy cluster and explain every latency spike around them.
        if is_leader:
            log.info("raft node %d: leading from term %d", self.id, self.core.term)
        elif self.core.role == Role.LEADER:  # stopping
            log.info("raft node %d: stopped leading (term %d)", self.id, self.core.term)
        else:
            log.warning("raft node %d: no longer leading (term %d, now %s)", self.id, self.core.term,
                        self.core.role.value)
        self.is_leader = is_leader
        if is_leader:
            self.leader_event.set()
        else:
            self.leader_event.clear()
        for cb in list(self._listeners):
            try:
                cb(is_leader)
            except Exception:
                log.exception("raft node %d: leadership listener failed", self.id)
