"""The dispatcher: agent sessions, heartbeats, assignments, task status reports.

It serves `shoal.api.dispatch.DispatcherAPI`: in-process to the agent on the manager's own node, over gRPC
with mutual TLS (shoal.rpc) to the others. Status reports are validated (only the node a task is assigned
to may report it, and only forward moves) and written in batches. Usage reports ride on heartbeats and stay in
memory (`usage`, shoal.manager.usage), as do the heartbeat counts the metrics read.

The heartbeat period an agent is told is the cluster's setting until the nodes would beat more often than
`max_heartbeats` times a second together; past that it grows with the number of nodes (as Nomad sizes its
heartbeat TTL), so an idle leader's work stays bounded however large the cluster. A node whose connection
closes is still down after `STREAM_GRACE` seconds; only a silent node (a partition) waits three periods.
Registrations are admitted at most `max_registrations` a second (shoal.manager.admission); a node over that is
told when to come back (`Deferred`).

Assignments are batched across commits, as swarmkit's dispatcher does: one store watch routes each task event
to the queue of the node it concerns, and the streams with new events are woken together in rounds. A round
comes at once when none came in the last `batch_wait` seconds, else when that wait ends or, sooner, when the
store has no transaction queued or being committed (the burst is over). Under a burst of commits (a service of
a thousand replicas on a thousand nodes is a commit with one task for each node) a node's stream thus wakes
once for what several commits gave it, while an isolated change, or a chain of them (a status report, then the
task it causes), goes out at once. A message carries at most `max_batch` of the queued events, in their order;
the rest follow in the next.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.api.attachments import is_attachment
from shoal.api.dispatch import COMPLETE, INCREMENTAL, MEAN_BEAT, Assignments, SessionTerms
from shoal.api.usage import NodeUsage
from shoal.clock import Clock, until_or_sleep
from shoal.errors import Deferred, NotFound, NotLeader, ShoalError, Unavailable, fresh
from shoal.manager.admission import Admission
from shoal.manager.usage import UsageStore
from shoal.model.objects import (
    SECOND,
    Annotations,
    ManagerStatus,
    Node,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    Task,
    TaskStatus,
)
from shoal.model.state import TaskState
from shoal.store.memory import Event, MemoryStore, ReadTx, Tx, WatchOverflow

log = logging.getLogger(__name__)

# Seconds a node whose session's connection closed has to open a new session before it is down (an agent
# reconnects within its first backoff steps, 0.1 s to a few seconds).
STREAM_GRACE = 3.0
# Heartbeats a second the leader takes at most from all its nodes together (0.7 ms of its CPU each, measured at
# 5,000 nodes): 250 keeps the swarm default of 5 s up to about 1,100 nodes.
DEFAULT_MAX_HEARTBEATS = 250.0
# Registrations a second a new leader is asked to take from the nodes that come back to it after an election.
REJOIN_RATE = 250.0
# Registrations a second the leader takes at most (a store write and a complete set of assignments each); more
# are told when to come back. Above REJOIN_RATE, so nodes that spread their return as asked are never deferred.
DEFAULT_MAX_REGISTRATIONS = 2 * REJOIN_RATE
# Seconds the streams' wake-ups are held after a round of them, so a burst of commits reaches each node as one
# message instead of one per commit (swarmkit waits 100 ms after a node's last change, up to 10,000 changes).
BATCH_WAIT = 0.1
# Queued events one assignment message takes at most (a node's new tasks of one burst, with their removals).
MAX_BATCH = 10_000
# Task status reports one transaction writes at most (a few MiB of log entry; reports that came together beyond this
# go in further transactions of the same group commit).
MAX_REPORTS_PER_WRITE = 2000


def assigned_to(t: Task, node_id: str) -> bool:
    # Network attachments of plain containers are the node's own doing: nothing for its agent to run.
    return t.node_id == node_id and t.status.state >= TaskState.ASSIGNED and not is_attachment(t)


@dataclass
class _Session:
    node_id: str
    last_seen: float
    # The heartbeat period the node was last told (it waits up to that long): it is down after 3 of them, also
    # while a changed cluster setting has not reached it yet.
    period: float
    expired: asyncio.Event = field(default_factory=asyncio.Event)
    # the assignment streams' wake-ups, also set on expiry so a stream waits on one event only
    wakes: list[asyncio.Event] = field(default_factory=list)
    lost_at: float | None = None  # when its last assignment stream ended (its connection closed)

    def expire(self) -> None:
        self.expired.set()
        for w in self.wakes:
            w.set()


class _DepCounts:
    """How many of a node's tasks reference each secret and config."""

    def __init__(self) -> None:
        self._by_task: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._secrets: dict[str, int] = {}
        self._configs: dict[str, int] = {}
        self.changes = 0  # how many times a secret or config came or went: the sets are unchanged while it is

    def _count(self, counts: dict[str, int], ids: tuple[str, ...], delta: int) -> None:
        for i in ids:
            n = counts.get(i, 0) + delta
            if n > 0:
                counts[i] = n
                if n == 1 and delta > 0:
                    self.changes += 1
            elif counts.pop(i, None) is not None:
                self.changes += 1

    def discard(self, task_id: str) -> None:
        old = self._by_task.pop(task_id, None)
        if old is not None:
            self._count(self._secrets, old[0], -1)
            self._count(self._configs, old[1], -1)

    def add(self, task_id: str, secrets: tuple[str, ...], configs: tuple[str, ...]) -> None:
        """Set (or replace) what the task references."""
        self.discard(task_id)
        if secrets or configs:
            self._by_task[task_id] = (secrets, configs)
            self._count(self._secrets, secrets, 1)
            self._count(self._configs, configs, 1)

    def secrets(self) -> set[str]:
        return set(self._secrets)

    def configs(self) -> set[str]:
        return set(self._configs)


class Dispatcher:
    def __init__(self, store: MemoryStore, clock: Clock, *, max_heartbeats: float = DEFAULT_MAX_HEARTBEATS,
                 max_registrations: float = DEFAULT_MAX_REGISTRATIONS,
                 batch_wait: float = BATCH_WAIT, max_batch: int = MAX_BATCH) -> None:
        if max_heartbeats <= 0:
            raise ValueError("max_heartbeats must be positive")
        if batch_wait < 0 or max_batch < 1:
            raise ValueError("batch_wait must not be negative and max_batch must be positive")
        self.store = store
        self.clock = clock
        self.max_heartbeats = max_heartbeats
        self.admission = Admission(clock, max_registrations)
        self.sessions: dict[str, _Session] = {}
        self._pending: dict[str, tuple[str, TaskStatus]] = {}
        # Called with each task's seconds from its creation to its first running report, once that is written
        # (the daemon's metrics: swarmkit's scheduling delay).
        self.on_scheduling_delay: Callable[[float], None] | None = None
        self._flush_needed = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._queues: dict[str, list[list[Any]]] = {}
        self._wakeups: dict[str, list[asyncio.Event]] = {}
        self.batch_wait = batch_wait
        self.max_batch = max_batch
        # Nodes whose queues got events since their streams were last woken (one set for good: the fan-out holds
        # it), and the waker's signal.
        self._touched: set[str] = set()
        self._touched_ready = asyncio.Event()
        self.wake_rounds = 0  # rounds of stream wake-ups since this manager started (each wakes many streams)
        # Set once the fan-out's store watch exists: a session's complete set must not be read before,
        # or the changes committed between that read and the watch would never reach the agent.
        self._fanout_ready = asyncio.Event()
        self.active = False  # run() is running: this manager leads
        self.usage = UsageStore(clock)  # the nodes' usage reports, while this manager leads
        # Since this manager started: heartbeats taken, and sessions ended by the expiry loop by why
        # ("heartbeat": three periods silent; "connection": its connection closed and no new session came).
        self.heartbeats = 0
        self.late_heartbeats = 0  # came over 1.5 periods after the node's previous one: at least one missed
        self.expirations: Counter[str] = Counter()

    def configured_period(self, view: ReadTx | None = None) -> float:
        c = (view or self.store.view()).cluster()
        # A spec without a period (POST /swarm/update with 0) runs by swarmkit's default.
        return (c.spec.heartbeat_period if c and c.spec.heartbeat_period else 5 * SECOND) / SECOND

    def heartbeat_period(self) -> float:
        """The configured period, or longer where the nodes would beat more than `max_heartbeats` a second."""
        return self.terms().period

    def terms(self) -> SessionTerms:
        """Told at every register and heartbeat: one read of the store for both figures."""
        view = self.store.view()
        nodes = view.count("node")
        return SessionTerms(max(self.configured_period(view), nodes / (self.max_heartbeats * MEAN_BEAT)),
                            nodes / REJOIN_RATE)

    # --- sessions ---------------------------------------------------------------------------------

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        if not self.active:
            raise NotLeader("this manager is not the swarm leader: its dispatcher is not running")
        wait = self.admission.admit(node_id)
        if wait > 0:
            raise Deferred(f"the leader takes {self.admission.rate:g} registrations a second; register again in "
                           f"{wait:.2f}s", wait)

        def fn(tx: Tx) -> None:
            node = tx.node(node_id)
            if node is None:
                raise NotFound(f"node {node_id} not found")
            tx.update(replace(node, description=description,
                              status=NodeStatus(state="ready", addr=addr or node.status.addr)),
                      check_version=False)

        await self.store.update(fn)
        old = self.sessions.get(node_id)
        if old is not None:
            old.expire()
        terms = self.terms()
        self.sessions[node_id] = _Session(node_id, self.clock.monotonic(), terms.period)
        return terms

    async def heartbeat(self, node_id: str, usage: NodeUsage | None = None) -> SessionTerms:
        if not self.active:
            raise NotLeader("this manager is not the swarm leader: its dispatcher is not running")
        s = self.sessions.get(node_id)
        if s is None or s.expired.is_set():
            raise NotFound("node not registered")
        now = self.clock.monotonic()
        if now - s.last_seen > 1.5 * s.period:
            self.late_heartbeats += 1
        s.last_seen = now
        self.heartbeats += 1
        if usage is not None:
            self.usage.put(node_id, usage)
        terms = self.terms()
        s.period = terms.period
        return terms

    def current_usage(self) -> dict[str, tuple[NodeUsage, float]]:
        """The usage reports of nodes that have a session now, with their ages (empty unless leading)."""
        return self.usage.current(lambda nid: nid in self.sessions)

    def heartbeat_ages(self) -> dict[str, float]:
        """Seconds since each node with a session last beat (or registered)."""
        now = self.clock.monotonic()
        return {nid: max(0.0, now - s.last_seen) for nid, s in self.sessions.items()}

    async def run(self) -> None:
        """Leader-only: expire sessions that missed heartbeats; flush status reports. When the term ends every
        session ends with it, so each agent registers again with whoever leads next."""
        self.active = True
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._expiry_loop())
                tg.create_task(self._flush_loop())
                tg.create_task(self._fanout())
                tg.create_task(self._waker())
        finally:
            self.active = False
            for sess in self.sessions.values():
                sess.expire()
            self.sessions.clear()
            self.usage.clear()
            self.admission.reset()
            self._pending = {}
            self._touched.clear()
            self._touched_ready.clear()
            waiters, self._waiters = self._waiters, []
            for w in waiters:  # their agents keep the reports and send them to the next leader
                if not w.done():
                    w.set_exception(NotLeader("this manager stopped leading before the reports were written"))

    async def _expiry_loop(self) -> None:
        """A node is down after 3 missed heartbeat periods (Swarm's rule: a silent node, a partition) or, sooner,
        `STREAM_GRACE` seconds after its session's connection closed without a new session (its process died
        or its host went down cleanly: the kernel closed the socket, so waiting for heartbeats only delays
        rescheduling its tasks)."""
        while True:
            period = self.heartbeat_period()
            await self.clock.sleep(min(period / 2, STREAM_GRACE / 4))
            now = self.clock.monotonic()
            dead = [(s, "heartbeat" if now - s.last_seen > 3 * s.period else "connection")
                    for s in self.sessions.values() if now - s.last_seen > 3 * s.period
                    or (s.lost_at is not None and not s.wakes and now - s.lost_at > STREAM_GRACE)]
            for s, why in dead:
                s.expire()
                del self.sessions[s.node_id]
                self.usage.drop(s.node_id)
                self.expirations[why] += 1
                await self._mark_down(s.node_id, "heartbeat failure")

    async def _mark_down(self, node_id: str, message: str) -> None:
        def fn(tx: Tx) -> None:
            node = tx.node(node_id)
            if node is not None and node.status.state != "down":
                tx.update(replace(node, status=replace(node.status, state="down", message=message)),
                          check_version=False)

        await self.store.update(fn)

    # --- assignments ------------------------------------------------------------------------------

    @staticmethod
    def _task_deps(t: Task) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The secrets and configs a task needs on its node (none once it has finished for good)."""
        c = t.spec.container
        if (not c.secrets and not c.configs) or (t.status.state >= TaskState.COMPLETE
                                                 and t.desired_state > TaskState.RUNNING):
            return (), ()
        return tuple(r.secret_id for r in c.secrets), tuple(r.config_id for r in c.configs)

    async def _fanout(self) -> None:
        """One store watch for all sessions: route task events to the node they concern. The streams are woken
        by `_waker`, after each commit's events are all queued."""
        while True:
            sub = self.store.watch(kinds=("task", "secret", "config"), limit=1_000_000)
            self._fanout_ready.set()
            queues = self._queues
            touched = self._touched
            try:
                async for item in sub:
                    if isinstance(item, Event):
                        if item.kind == "task":
                            nid = item.obj.node_id
                            for q in queues.get(nid, ()):
                                q.append(item)
                                touched.add(nid)
                            old = item.old
                            if old is not None and old.node_id and old.node_id != nid:
                                for q in queues.get(old.node_id, ()):
                                    q.append(item)
                                    touched.add(old.node_id)
                        else:
                            for nid, qs in queues.items():
                                for q in qs:
                                    q.append(item)
                                touched.add(nid)
                    elif touched:  # a commit's marker, with events queued since the last round
                        self._touched_ready.set()
            except WatchOverflow:
                # Every session starts over with a complete set.
                for sess in self.sessions.values():
                    sess.expire()
            finally:
                self._fanout_ready.clear()
                sub.close()

    async def _waker(self) -> None:
        """Wake the streams of the nodes with new events in rounds: the next round is held for `batch_wait`
        after one, or until the store has no transaction queued or being committed, so a burst of commits is one
        wake-up (and one message) per node and wait."""
        while True:
            await self._touched_ready.wait()
            self._touched_ready.clear()
            touched = list(self._touched)  # the fan-out keeps adding to the same set
            self._touched.clear()
            self.wake_rounds += 1
            for nid in touched:
                for w in self._wakeups.get(nid, ()):
                    w.set()
            if self.batch_wait > 0:
                await until_or_sleep(self.store.wait_idle(), self.clock, self.batch_wait)
            else:
                await asyncio.sleep(0)

    async def assignments(self, node_id: str) -> AsyncIterator[Assignments]:
        session = self.sessions.get(node_id)
        if session is None:
            raise NotFound("node not registered")
        await self._fanout_ready.wait()
        queue: list[Any] = []
        wake = asyncio.Event()
        self._queues.setdefault(node_id, []).append(queue)
        self._wakeups.setdefault(node_id, []).append(wake)
        session.wakes.append(wake)
        session.lost_at = None
        try:
            v = self.store.view()
            tasks = {t.id: t for t in v.tasks(node_id=node_id) if assigned_to(t, node_id)}
            # Reference counts of the node's secrets and configs, kept up to date task by task: recounting
            # every task of the node on every message made a busy node's stream quadratic.
            deps = _DepCounts()
            for have in tasks.values():
                deps.add(have.id, *self._task_deps(have))
            secrets, configs = deps.secrets(), deps.configs()
            deps_seen = deps.changes
            yield Assignments(
                type=COMPLETE, tasks=tuple(tasks.values()),
                secrets=tuple(s for s in (v.get("secret", i) for i in secrets) if s is not None),
                configs=tuple(c for c in (v.get("config", i) for i in configs) if c is not None))
            while not session.expired.is_set():
                if not queue:
                    wake.clear()
                    if not session.expired.is_set():
                        await wake.wait()  # set by the fan-out and by expiry
                    continue
                events = queue[:self.max_batch]
                del queue[:self.max_batch]
                changed: dict[str, Task] = {}
                removed: set[str] = set()
                dep_changed: set[str] = set()
                for item in events:
                    if item.kind == "task":
                        t: Task = item.obj
                        if item.action != "remove" and assigned_to(t, node_id):
                            changed[t.id] = t
                            removed.discard(t.id)
                        elif t.id in tasks or t.id in changed:
                            removed.add(t.id)
                            changed.pop(t.id, None)
                    else:
                        dep_changed.add(item.obj.id)
                for tid in removed:
                    tasks.pop(tid, None)
                    deps.discard(tid)
                tasks.update(changed)
                for t in changed.values():
                    deps.add(t.id, *self._task_deps(t))
                if deps.changes == deps_seen and not dep_changed:
                    # The node's secrets and configs are as the last message left them (the common case).
                    msg = Assignments(type=INCREMENTAL, tasks=tuple(changed.values()), removed_tasks=tuple(removed))
                else:
                    deps_seen = deps.changes
                    new_s, new_c = deps.secrets(), deps.configs()
                    v = self.store.view()
                    add_s = {x for x in new_s if x not in secrets or x in dep_changed}
                    add_c = {x for x in new_c if x not in configs or x in dep_changed}
                    msg = Assignments(
                        type=INCREMENTAL, tasks=tuple(changed.values()),
                        secrets=tuple(x for x in (v.get("secret", i) for i in add_s) if x is not None),
                        configs=tuple(x for x in (v.get("config", i) for i in add_c) if x is not None),
                        removed_tasks=tuple(removed),
                        removed_secrets=tuple(secrets - new_s), removed_configs=tuple(configs - new_c))
                    secrets, configs = new_s, new_c
                if msg.tasks or msg.removed_tasks or msg.secrets or msg.configs or msg.removed_secrets \
                        or msg.removed_configs:
                    yield msg
        finally:
            session.wakes.remove(wake)
            if not session.wakes and not session.expired.is_set() and self.sessions.get(node_id) is session:
                session.lost_at = self.clock.monotonic()
            self._queues[node_id].remove(queue)
            self._wakeups[node_id].remove(wake)
            if not self._queues[node_id]:
                del self._queues[node_id]
                del self._wakeups[node_id]

    # --- status reports ---------------------------------------------------------------------------

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        """Returns once the reports are written; raises if they could not be (the agent keeps and resends them)."""
        if not self.active:
            raise NotLeader("this manager is not the swarm leader: its dispatcher is not running")
        for tid, status in updates:
            self._pending[tid] = (node_id, status)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self._flush_needed.set()
        await done

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_needed.wait()
            self._flush_needed.clear()
            # Swapped together: every waiter's reports are in exactly this batch.
            batch, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            error: Exception | None = None
            if batch:
                try:
                    # In transactions of at most MAX_REPORTS_PER_WRITE reports, which group commit puts into as many
                    # log entries as their size needs: thousands of tasks starting at once (a new leader, a large
                    # service) would otherwise be one entry too large to replicate.
                    items = list(batch.items())
                    parts = [dict(items[i:i + MAX_REPORTS_PER_WRITE])
                             for i in range(0, len(items), MAX_REPORTS_PER_WRITE)]

                    def write(tx: Tx, b: dict[str, tuple[str, TaskStatus]]) -> list[float]:
                        return self._apply_statuses(tx, b)

                    results = await asyncio.gather(*(self.store.update(functools.partial(write, b=part))
                                                     for part in parts), return_exceptions=True)
                    failed = next((r for r in results if isinstance(r, BaseException)), None)
                    if failed is not None:
                        raise failed
                    if self.on_scheduling_delay is not None:
                        for delays in results:
                            assert isinstance(delays, list)
                            for d in delays:
                                self.on_scheduling_delay(d)
                except asyncio.CancelledError:
                    self._waiters = waiters + self._waiters  # failed by run()'s cleanup
                    raise
                except Exception as e:
                    log.warning("writing %d task status reports failed: %s", len(batch), e)
                    error = e if isinstance(e, ShoalError) else Unavailable(f"writing task status failed: {e}")
            for w in waiters:
                if not w.done():
                    if error is None:
                        w.set_result(None)
                    else:
                        w.set_exception(fresh(error))

    def _apply_statuses(self, tx: Tx, batch: dict[str, tuple[str, TaskStatus]]) -> list[float]:
        """Write the reports; the scheduling delays of the tasks that now run for the first time."""
        delays: list[float] = []
        for tid, (node_id, status) in batch.items():
            t = tx.task(tid)
            if t is None or t.node_id != node_id:
                continue  # a report from a node the task is not assigned to is ignored
            if status.state < t.status.state:
                continue  # states only move forward
            if status == t.status:
                continue
            if status.state == TaskState.RUNNING and t.status.state < TaskState.RUNNING:
                delays.append(max(0.0, tx.now - t.meta.created_at))
            tx.update(replace(t, status=status), check_version=False)
        return delays


def node_for_local(node_id: str, hostname: str, role: str, addr: str) -> Node:
    return Node(id=node_id, spec=NodeSpec(annotations=Annotations(), role=role, availability="active"),
                description=NodeDescription(hostname=hostname),
                status=NodeStatus(state="unknown", addr=addr),
                manager_status=ManagerStatus(leader=True, reachability="reachable", addr=addr)
                if role == "manager" else None)
