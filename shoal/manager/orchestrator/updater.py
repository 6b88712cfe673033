"""Rolling updates and rollbacks of one service, following UpdateConfig / RollbackConfig.

The updater replaces *dirty* tasks (made from another task template than the service's current one)
slot by slot, `parallelism` slots at a time (0 = all), waiting `delay` between batches. stop-first shuts
the old task down and starts the new one once the old has stopped; start-first starts the new one and
shuts the old one down once the new one runs. A new task that fails before running, or within `monitor`
of reaching running, is a failure; once failures exceed `max_failure_ratio` of the slots being updated,
`failure_action` decides: pause, continue, or roll back to the previous spec.

Everything it knows is in the store (UpdateStatus, tasks' spec), so a new leader resumes an update where
the old one stopped without counting anything twice: a slot is done when it holds exactly one runnable
task, clean and meant to run. A slot that a previous leader left half-way (a clean replacement held at
READY, or two generations side by side after a start-first step) still needs the updater, which then
finishes that slot with the task already there instead of making another one.

Failures are watched as they happen (a store watch on the service's tasks, as swarmkit does), so a new
task that ends inside its monitor window counts even while later batches are in flight, and one that
ends after its window never does, however late the updater looks.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from shoal.clock import Clock
from shoal.manager.orchestrator.reconcile import (
    LABEL_REPLACES,
    Reconciler,
    ended,
    is_dirty,
    make_task,
    runnable,
    slot_holders,
    slot_key,
)
from shoal.model.objects import SECOND, Service, Task, UpdateConfig, UpdateStatus
from shoal.model.state import TaskState
from shoal.store.memory import Event, MemoryStore, Subscription, Tx

log = logging.getLogger(__name__)

DEFAULT_UPDATE = UpdateConfig()


async def wait_for_change(store: MemoryStore, clock: Clock, timeout: float | None) -> None:
    """Return after the next commit that touches tasks or services, or after `timeout` seconds."""
    sub = store.watch(kinds=("task", "service", "node"), limit=1_000_000)
    try:
        waiter = asyncio.ensure_future(sub.get())
        sleeper = asyncio.ensure_future(clock.sleep(timeout)) if timeout is not None else None
        try:
            await asyncio.wait([f for f in (waiter, sleeper) if f is not None],
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if sleeper is not None:
                sleeper.cancel()
    finally:
        sub.close()


PAUSED = ("paused", "rollback_paused")


def slots_needing_update(svc: Service, tasks: list[Task]) -> list[list[Task]]:
    """The slots whose holders (see slot_holders) are not exactly one clean task meant to run, in slot
    order. A slot held by a finished task (not restarted) is updated too, as swarmkit's updater does."""
    out = []
    for ts in slot_holders(svc, tasks).values():
        # A drained node's task and the clean replacement on its way (the reconciler's drain) are one slot
        # moving, not two generations: the reconciler finishes that move.
        replaced = {t.annotations.labels.get(LABEL_REPLACES) for t in ts}
        mine = [t for t in ts if t.id not in replaced]
        held = _held_replacement(mine[0]) and LABEL_REPLACES not in mine[0].annotations.labels
        if len(mine) > 1 or held or any(is_dirty(svc, t) for t in ts):
            out.append(sorted(ts, key=lambda t: t.meta.created_at))
    out.sort(key=lambda ts: (ts[0].slot, ts[0].node_id))
    return out


def _held_replacement(t: Task) -> bool:
    """A stop-first replacement held at READY by an updater that is gone (not a restart delay)."""
    return t.desired_state == TaskState.READY and t.start_after <= 0


class Updater:
    def __init__(self, store: MemoryStore, clock: Clock, reconciler: Reconciler, service_id: str) -> None:
        self.store = store
        self.clock = clock
        self.reconciler = reconciler
        self.service_id = service_id
        # Tasks this updater made -> monotonic time it saw them RUNNING (None: not yet).
        self._updated: dict[str, float | None] = {}
        self._failures: set[str] = set()

    # --- helpers over the current state -----------------------------------------------------------

    def _service(self) -> Service | None:
        return self.store.view().service(self.service_id)

    def _slots(self, svc: Service) -> list[list[Task]]:
        return slots_needing_update(svc, self.store.view().tasks(service_id=svc.id))

    def _task(self, tid: str) -> Task | None:
        return self.store.view().task(tid)

    async def _wait_until(self, pred: object, timeout: float | None = None) -> bool:
        assert callable(pred)
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        while True:
            if pred():
                return True
            remaining = None if deadline is None else deadline - self.clock.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await wait_for_change(self.store, self.clock, remaining)

    async def _set_status(self, state: str, message: str, *, completed: bool = False) -> None:
        now = self.clock.now()

        def fn(tx: Tx) -> None:
            svc = tx.service(self.service_id)
            if svc is None:
                return
            started = svc.update_status.started_at if svc.update_status and svc.update_status.started_at \
                else now
            tx.update(replace(svc, update_status=UpdateStatus(
                state=state, started_at=started, completed_at=now if completed else 0.0, message=message)),
                check_version=False)

        await self.store.update(fn)

    # --- the update -------------------------------------------------------------------------------

    async def run(self) -> None:
        svc = self._service()
        if svc is None:
            return
        status = svc.update_status
        if status is not None and status.state in PAUSED:
            return
        rolling_back = status is not None and status.state == "rollback_started"
        cfg = (svc.spec.rollback_config if rolling_back else svc.spec.update_config) or DEFAULT_UPDATE
        slots = self._slots(svc)
        if not slots:
            if status is not None and status.state in ("updating", "rollback_started"):
                await self._complete(rolling_back)  # a previous leader finished the work, not the status
            return
        if status is None or status.state == "":
            # Only a new update starts "updating" (as swarmkit's startUpdate). A re-run after completion
            # (a slot the restart policy is still working on) stays quiet instead of flapping the status.
            await self._set_status("updating", "update in progress")
        total = len(slots)
        monitor = cfg.monitor_or_default / SECOND
        tripped: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # Subscribe before the first task is made, so no status change of ours is missed.
        sub = self.store.watch(kinds=("task",), limit=1_000_000)
        watcher = asyncio.create_task(self._watch_failures(sub, cfg, total, monitor, tripped))
        rollout = asyncio.create_task(self._rollout(cfg))
        try:
            first: set[asyncio.Future[Any]] = {rollout, tripped}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            if not tripped.done():
                rollout.result()  # re-raise a failure of the rollout itself
                # Keep watching the last batch for one monitor period before calling it done.
                sleeper = asyncio.ensure_future(self.clock.sleep(monitor))
                try:
                    last: set[asyncio.Future[Any]] = {sleeper, tripped}
                    await asyncio.wait(last, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
            if tripped.done():
                rollout.cancel()
                await self._fail(cfg, rolling_back, tripped.result())
                return
        finally:
            rollout.cancel()
            watcher.cancel()
            sub.close()
        await self._complete(rolling_back)

    async def _complete(self, rolling_back: bool) -> None:
        svc = self._service()
        if svc is None or (svc.update_status is not None
                           and svc.update_status.state in ("completed", "rollback_completed")):
            return
        if rolling_back:
            await self._set_status("rollback_completed", "rollback completed", completed=True)
        else:
            await self._set_status("completed", "update completed", completed=True)

    async def _rollout(self, cfg: UpdateConfig) -> None:
        total: int | None = None
        # Each slot is worked on once per run (as swarmkit's dirty-slot list): a slot whose new task
        # failed is left to the restart policy, not replaced again and again by the updater.
        done: set[str] = set()
        while True:
            svc = self._service()
            if svc is None:
                return
            slots = [ts for ts in self._slots(svc) if slot_key(ts[0]) not in done]
            if not slots:
                return
            done.update(slot_key(ts[0]) for ts in slots[: cfg.parallelism or len(slots)])
            if total is None:
                total = len(slots)
            parallelism = cfg.parallelism if cfg.parallelism > 0 else total
            await asyncio.gather(*(self._update_slot(svc, ts, cfg) for ts in slots[:parallelism]))
            if cfg.delay > 0 and any(slot_key(ts[0]) not in done for ts in self._slots(svc)):
                await self.clock.sleep(cfg.delay / SECOND)

    async def _watch_failures(self, sub: Subscription, cfg: UpdateConfig, total: int, monitor: float,
                              tripped: asyncio.Future[str]) -> None:
        """Count tasks of this update that fail before running or within `monitor` of running
        (swarmkit: `startedAt.IsZero() || time.Since(startedAt) <= monitoringPeriod`)."""
        async for item in sub:
            if not isinstance(item, Event) or item.action == "remove":
                continue
            t: Task = item.obj
            if t.id not in self._updated or t.id in self._failures:
                continue
            st = t.status.state
            if st == TaskState.RUNNING:
                if self._updated[t.id] is None:
                    self._updated[t.id] = self.clock.monotonic()
                continue
            if st < TaskState.COMPLETE or t.desired_state > TaskState.RUNNING:
                continue  # not ended, or stopped on purpose (scale down, drain): not a failure
            started = self._updated[t.id]
            if started is not None and self.clock.monotonic() - started > monitor:
                continue
            self._failures.add(t.id)
            if cfg.failure_action != "continue" and len(self._failures) / total > cfg.max_failure_ratio \
                    and not tripped.done():
                tripped.set_result(t.id)

    async def _fail(self, cfg: UpdateConfig, rolling_back: bool, task_id: str) -> None:
        if rolling_back:
            # Never roll back a rollback.
            await self._set_status("rollback_paused",
                                   f"rollback paused due to failure or early termination of task {task_id}")
            return
        if cfg.failure_action == "rollback":
            msg = f"update rolled back due to failure or early termination of task {task_id}"

            def fn(tx: Tx) -> bool:
                cur = tx.service(self.service_id)
                if cur is None or cur.previous_spec is None:
                    return False
                # As swarmkit's rollbackUpdate: the previous spec is consumed, so a later
                # `service rollback` is refused ("does not have a previous spec").
                tx.update(replace(
                    cur, spec=cur.previous_spec, previous_spec=None,
                    spec_version=cur.spec_version + 1, previous_spec_version=0,
                    update_status=UpdateStatus(state="rollback_started", started_at=self.clock.now(),
                                               message=msg)), check_version=False)
                return True

            if await self.store.update(fn):
                return
        await self._set_status("paused", f"update paused due to failure or early termination of task {task_id}")

    async def _update_slot(self, svc: Service, slot: list[Task], cfg: UpdateConfig) -> None:
        """Bring one slot to exactly one clean task meant to run."""
        start_first = cfg.order == "start-first"
        clean = [t for t in slot if not is_dirty(svc, t)]
        # A clean task already there (left by a previous leader) is finished rather than replaced.
        keep = next((t for t in clean if t.desired_state == TaskState.RUNNING), None) \
            or next((t for t in clean if t.desired_state == TaskState.READY), None)
        if keep is not None:
            old = [t for t in slot if t.id != keep.id]
            new_id = keep.id
            if keep.desired_state == TaskState.READY and keep.start_after > 0:
                # A restart replacement waiting out its restart delay: the timers start it, not us.
                await self._wait_until(lambda: (t := self._task(new_id)) is None
                                       or t.desired_state != TaskState.READY)
                start_first = True
            if keep.desired_state == TaskState.RUNNING:
                start_first = True  # it may already run: stop the others once it does
        else:
            old = slot
            first = slot[0]
            new_id = self.reconciler.new_id()
            self._updated[new_id] = None

            def create(tx: Tx) -> None:
                cur = tx.service(svc.id)
                if cur is None:
                    return
                if not start_first:
                    self._shutdown(tx, old)
                tx.create(make_task(
                    cur, tid=new_id, slot=first.slot, node_id=first.node_id if first.slot == 0 else "",
                    now=tx.now, desired=TaskState.RUNNING if start_first else TaskState.READY,
                    job_iteration=first.job_iteration))

            await self.store.update(create)

        def settled() -> bool:
            t = self._task(new_id)
            return t is None or t.status.state >= TaskState.RUNNING

        if start_first:
            await self._store_update_start(new_id)
            await self._wait_until(settled)
            t = self._task(new_id)
            if t is not None and t.status.state == TaskState.RUNNING:
                await self.store.update(lambda tx: self._shutdown(tx, old))
            return

        await self.store.update(lambda tx: self._shutdown(tx, old))

        def old_stopped() -> bool:
            for t in old:
                cur = self._task(t.id)
                if cur is not None and cur.node_id and not ended(cur):
                    return False
            return True

        await self._wait_until(old_stopped)
        await self._store_update_start(new_id)
        await self._wait_until(settled)

    async def _store_update_start(self, tid: str) -> None:
        def go(tx: Tx) -> None:
            t = tx.task(tid)
            if t is not None and t.desired_state == TaskState.READY:
                tx.update(replace(t, desired_state=TaskState.RUNNING, start_after=0.0))

        await self.store.update(go)

    @staticmethod
    def _shutdown(tx: Tx, tasks: list[Task]) -> None:
        for t in tasks:
            live = tx.task(t.id)
            if live is not None and runnable(live):
                tx.update(replace(live, desired_state=TaskState.SHUTDOWN))
