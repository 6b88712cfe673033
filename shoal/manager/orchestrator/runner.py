"""The orchestrator loop: watch the store, reconcile touched services, run updaters and restart timers.

Startup is a full sweep (repairing whatever a previous leader left half-done); steady state reacts to
events, batching everything that arrived before each commit marker into one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from shoal.clock import Clock, until_or_sleep
from shoal.errors import Unavailable
from shoal.manager.cron.view import job_view
from shoal.manager.orchestrator.reconcile import LABEL_REPLACES, Reconciler, reap_removed
from shoal.manager.orchestrator.updater import Updater, slots_needing_update
from shoal.manager.stats import LeaderStats
from shoal.model.objects import Node, Service, Task
from shoal.model.state import TaskState
from shoal.store.memory import Commit, Event, MemoryStore, Tx, WatchOverflow

log = logging.getLogger(__name__)

# Changes one reconciliation transaction takes before the next service goes into another (a few MiB of log
# entry: a pass over 100 services of 1,000 tasks after a leader change was one entry of 117 MB, which no Raft
# message could carry; see shoal.store.memory.MAX_TRANSACTION_BYTES).
MAX_PASS_CHANGES = 2000


class Orchestrator:
    def __init__(self, store: MemoryStore, clock: Clock, reconciler: Reconciler,
                 stats: LeaderStats | None = None) -> None:
        self.store = store
        self.clock = clock
        self.reconciler = reconciler
        self.stats = stats
        self._updaters: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._timer_poke = asyncio.Event()
        # Tasks the reconciler created (ID -> node), until their creation comes back from the store: the pass that
        # created one had it in view, so its creation alone is no reason for another pass over the service (its
        # creation assigned to a node by the scheduler in the same transaction is, as an assignment always was).
        self._created: dict[str, str] = {}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._timers())
            try:
                await self._loop()
            finally:
                for _, task in self._updaters.values():
                    task.cancel()

    async def _loop(self) -> None:
        while True:
            ids, sub = self.store.view_and_watch(lambda v: {s.id for s in v.services()},
                                                 kinds=("service", "task", "node", "cluster"))
            self._created.clear()
            await self._reconcile(ids, reap=True)
            try:
                pending: set[str] = set()
                reap = False
                async for item in sub:
                    if isinstance(item, Event):
                        reap |= self._touched(item, pending)
                        continue
                    assert isinstance(item, Commit)
                    # Fold every commit already buffered into this round.
                    for more in sub.drain():
                        if isinstance(more, Event):
                            reap |= self._touched(more, pending)
                    if pending or reap:
                        todo, pending = pending, set()
                        await self._reconcile(todo, reap=reap)
                        reap = False
            except WatchOverflow:
                log.warning("orchestrator fell behind the store; resyncing")
            finally:
                sub.close()

    def _touched(self, ev: Event, pending: set[str]) -> bool:
        if ev.kind == "service":
            pending.add(ev.obj.id)
            return ev.action == "remove"
        if ev.kind == "task":
            t = ev.obj
            if t.desired_state == TaskState.READY:
                self._timer_poke.set()  # maybe a restart delay to wait out
            progressed = ev.action == "update" and _status_progress(ev.old, t)
            if ev.action == "create":
                made = self._created.pop(t.id, None)
                if made == t.node_id:
                    return False
                # Made unassigned by this orchestrator and placed by the scheduler's stage in the same
                # transaction: the same as its assignment coming in a later commit.
                progressed = made == "" and t.status.state == TaskState.ASSIGNED
            if progressed:
                # Allocator, scheduler and agent moving a live task forward: nothing the reconciler
                # decides depends on it, so only a service in an update (its updater may need a restart)
                # is looked at again. This saves a full pass over the service's tasks per such commit.
                if t.service_id in self.reconciler.waiting_on_moves:  # its replacement may run now
                    pending.add(t.service_id)
                    return False
                svc = self.store.view().service(t.service_id)
                if svc is None or svc.update_status is None or \
                        svc.update_status.state not in ("updating", "rollback_started"):
                    return False
            pending.add(t.service_id)
            return bool(t.desired_state >= 800)
        if ev.kind in ("node", "cluster"):
            if ev.kind == "node" and ev.action == "update" and isinstance(ev.old, Node) \
                    and ev.old.status == ev.obj.status and ev.old.spec == ev.obj.spec:
                return False  # only the description changed
            pending.update(s.id for s in self.store.view().services())
        return False

    async def _reconcile(self, service_ids: set[str], *, reap: bool) -> None:
        """Reconcile the services in as few transactions as keep each under `MAX_PASS_CHANGES` changes (one
        service's changes stay in one transaction): a pass over every service (a node went down, a new leader)
        would otherwise be one log entry of every restarted task, too large to replicate."""
        remaining = sorted(service_ids)
        while True:
            done: list[str] = []

            def fn(tx: Tx, todo: list[str] = remaining, done: list[str] = done) -> None:
                self.reconciler.events.clear()  # a transaction run again decides again
                done.clear()
                sp = tx.savepoint()
                nodes = self.reconciler.nodes(tx) if todo else {}
                for sid in todo:
                    if done and tx.savepoint() - sp >= MAX_PASS_CHANGES:
                        break  # the rest in the next transaction
                    done.append(sid)
                    svc = tx.service(sid)
                    if svc is not None:
                        self.reconciler.reconcile(tx, svc, nodes)
                if reap and len(done) == len(todo):
                    reap_removed(tx)
                # Noted before the commit: the loop may hear of it before this coroutine resumes. (If the
                # transaction fails, the IDs never come back; the next resync forgets them.) Not a move's
                # replacement: the pass after its creation is the one that starts waiting on it
                # (`waiting_on_moves`).
                self._created.update((obj.id, obj.node_id) for op, kind, obj in tx.actions[sp:]
                                     if op == "create" and kind == "task"
                                     and LABEL_REPLACES not in obj.annotations.labels)

            try:
                await self.store.update(fn)
                if self.stats is not None:
                    self.stats.count(self.reconciler.events)
            except Unavailable as e:  # no longer leading: the next leader reconciles from the store
                log.warning("reconciliation not written: %s", e)
                break
            except Exception:
                log.exception("reconciliation failed")
                break
            remaining = remaining[len(done):]
            if not remaining:
                break
        if self.reconciler.rebalancer.wakeups:
            self._timer_poke.set()  # a time to look again may have come nearer
        for sid in service_ids:
            self._maybe_update(sid)

    def _maybe_update(self, sid: str) -> None:
        svc = self.store.view().service(sid)
        running = self._updaters.get(sid)
        if svc is None:
            if running is not None:
                running[1].cancel()
                del self._updaters[sid]
            return
        if running is not None:
            version, task = running
            if not task.done() and version == svc.spec_version:
                return
            task.cancel()
            del self._updaters[sid]
        st = svc.update_status.state if svc.update_status is not None else ""
        if st in ("paused", "rollback_paused"):
            return
        if not self._needs_update(svc):
            return
        updater = Updater(self.store, self.clock, self.reconciler, sid)
        self._updaters[sid] = (svc.spec_version, asyncio.create_task(self._run_updater(updater)))

    def _needs_update(self, svc: Service) -> bool:
        if job_view(svc).spec.mode.is_job:
            return False
        st = svc.update_status.state if svc.update_status is not None else ""
        if st in ("updating", "rollback_started"):
            return True  # even with nothing left to replace: the status must still be completed
        return bool(slots_needing_update(svc, self.store.view().tasks(service_id=svc.id)))

    async def _run_updater(self, updater: Updater) -> None:
        try:
            await updater.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("updater for service %s failed", updater.service_id)

    async def _timers(self) -> None:
        """Start tasks whose restart delay has passed; look again at services rebalancing waits on (a node
        settling, a move's delay, a replacement the scheduler has not taken)."""
        while True:
            self._timer_poke.clear()
            due = await self.store.update(lambda tx: self.reconciler.start_due(tx, self.clock.now()))
            wakeups = self.reconciler.rebalancer.wakeups
            now = self.clock.now()
            ripe = {sid for sid, at in wakeups.items() if at <= now}
            if ripe:
                for sid in ripe:
                    wakeups.pop(sid, None)
                await self._reconcile(ripe, reap=False)
                continue
            later = min(wakeups.values(), default=None)
            if later is not None:
                due = later if due is None else min(due, later)
            timeout = None if due is None else max(0.0, due - self.clock.now())
            await until_or_sleep(self._timer_poke.wait(), self.clock, timeout)


def _status_progress(old: Task | None, new: Task) -> bool:
    """Only the observed status of a live task moved (it did not end): same desired state, node, slot,
    spec and restart timing. The reconciler's decisions read none of what changed."""
    return old is not None and old.status.state < TaskState.COMPLETE and \
        new.status.state < TaskState.COMPLETE and old.desired_state == new.desired_state and \
        old.node_id == new.node_id and old.slot == new.slot and old.start_after == new.start_after and \
        old.job_iteration == new.job_iteration and (old.spec is new.spec or old.spec == new.spec)


def constraint_checker() -> Callable[[Service, Node], bool]:
    """Constraint matching shared with the scheduler (global services pick their nodes with it)."""
    from shoal.manager.scheduler.constraints import parse_constraints

    cache: dict[tuple[str, ...], list[object]] = {}

    def check(svc: Service, node: Node) -> bool:
        placement = svc.spec.task_template.placement
        if placement is None or not placement.constraints:
            return True
        key = placement.constraints
        if key not in cache:
            cache[key] = list(parse_constraints(list(key)))
        return all(c.matches(node) for c in cache[key])  # type: ignore[attr-defined]

    return check
