"""Rolling updates and rollbacks of one service, following UpdateConfig / RollbackConfig.

The updater replaces *dirty* tasks (made from another task template than the service's current one)
slot by slot, `parallelism` slots at a time (0 = all), waiting `delay` between batches. stop-first shuts
the old task down and starts the new one once the old has stopped; start-first starts the new one and
shuts the old one down once the new one runs. A new task that fails before running, or within `monitor`
of reaching running, is a failure; once failures exceed `max_failure_ratio` of the slots being updated,
`failure_action` decides: pause, continue, or roll back to the previous spec.

Everything it knows is in the store (UpdateStatus, tasks' spec), so a new leader resumes an update where
the old one stopped without counting anything twice: a slot is done when its runnable task is clean.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import replace

from shoal.clock import Clock
from shoal.manager.orchestrator.reconcile import Reconciler, ended, is_dirty, make_task, runnable, slot_key
from shoal.model.objects import SECOND, Service, Task, UpdateConfig, UpdateStatus
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, Tx

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


class Updater:
    def __init__(self, store: MemoryStore, clock: Clock, reconciler: Reconciler, service_id: str) -> None:
        self.store = store
        self.clock = clock
        self.reconciler = reconciler
        self.service_id = service_id

    # --- helpers over the current state -----------------------------------------------------------

    def _service(self) -> Service | None:
        return self.store.view().service(self.service_id)

    def _dirty_slots(self, svc: Service) -> list[list[Task]]:
        slots: dict[str, list[Task]] = defaultdict(list)
        for t in self.store.view().tasks(service_id=svc.id):
            if runnable(t):
                slots[slot_key(t)].append(t)
        dirty = [ts for ts in slots.values() if ts and all(is_dirty(svc, t) for t in ts)]
        dirty.sort(key=lambda ts: (ts[0].slot, ts[0].node_id))
        return dirty

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
        rolling_back = svc.update_status is not None and svc.update_status.state.startswith("rollback")
        cfg = (svc.spec.rollback_config if rolling_back else svc.spec.update_config) or DEFAULT_UPDATE
        dirty = self._dirty_slots(svc)
        status = svc.update_status
        if not dirty:
            return
        if status is None or status.state in ("completed", "rollback_completed", ""):
            await self._set_status("updating", "update in progress")
        total = len(dirty)
        parallelism = cfg.parallelism if cfg.parallelism > 0 else total
        failures: set[str] = set()
        monitored: dict[str, float] = {}  # new task id -> monotonic time it reached running
        monitor = cfg.monitor / SECOND

        def sweep() -> str | None:
            """Count monitored tasks that ended inside their window; forget those past it."""
            now = self.clock.monotonic()
            failed = None
            for tid, since in list(monitored.items()):
                t = self._task(tid)
                if t is None or (ended(t) and t.status.state != TaskState.COMPLETE) \
                        or (t.desired_state > TaskState.RUNNING and t.status.state >= TaskState.SHUTDOWN):
                    failures.add(tid)
                    failed = tid
                    del monitored[tid]
                elif now - since >= monitor:
                    del monitored[tid]
            return failed

        def too_many() -> bool:
            return bool(failures) and len(failures) / total > cfg.max_failure_ratio

        while True:
            last_failed = sweep()
            if too_many() and cfg.failure_action != "continue":
                await self._fail(svc, cfg, rolling_back, last_failed or next(iter(failures)))
                return
            svc = self._service()
            if svc is None:
                return
            dirty = self._dirty_slots(svc)
            if not dirty:
                break
            batch = dirty[:parallelism]
            results = await asyncio.gather(*(self._update_slot(svc, ts, cfg) for ts in batch))
            for tid, ok in results:
                if ok:
                    monitored[tid] = self.clock.monotonic()
                else:
                    failures.add(tid)
            if too_many() and cfg.failure_action != "continue":
                await self._fail(svc, cfg, rolling_back, next(t for t, ok in results if not ok)
                                 if not all(ok for _, ok in results) else next(iter(failures)))
                return
            if cfg.delay > 0 and self._dirty_slots(svc):
                await self.clock.sleep(cfg.delay / SECOND)
        # Let the last batch live through its monitoring window before calling the update done.
        while monitored:
            failed = sweep()
            if too_many() and cfg.failure_action != "continue":
                await self._fail(svc, cfg, rolling_back, failed or next(iter(failures)))
                return
            if not monitored:
                break
            end = min(monitored.values()) + monitor
            await wait_for_change(self.store, self.clock, max(0.0, end - self.clock.monotonic()) + 0.001)
        if rolling_back:
            await self._set_status("rollback_completed", "rollback completed", completed=True)
        else:
            await self._set_status("completed", "update completed", completed=True)

    async def _fail(self, svc: Service, cfg: UpdateConfig, rolling_back: bool, task_id: str) -> None:
        if rolling_back:
            await self._set_status("rollback_paused",
                                   f"rollback paused due to failure or early termination of task {task_id}")
            return
        if cfg.failure_action == "rollback" and svc.previous_spec is not None:
            msg = f"update rolled back due to failure or early termination of task {task_id}"

            def fn(tx: Tx) -> None:
                cur = tx.service(self.service_id)
                if cur is None or cur.previous_spec is None:
                    return
                tx.update(replace(
                    cur, spec=cur.previous_spec, previous_spec=cur.spec,
                    spec_version=cur.spec_version + 1, previous_spec_version=cur.spec_version,
                    update_status=UpdateStatus(state="rollback_started", started_at=self.clock.now(),
                                               message=msg)), check_version=False)

            await self.store.update(fn)
            return
        await self._set_status("paused", f"update paused due to failure or early termination of task {task_id}")

    async def _update_slot(self, svc: Service, old: list[Task], cfg: UpdateConfig) -> tuple[str, bool]:
        first = old[0]
        start_first = cfg.order == "start-first"
        node_id = first.node_id if first.slot == 0 else ""

        def create(tx: Tx) -> Task:
            cur = tx.service(svc.id)
            assert cur is not None
            if not start_first:
                for t in old:
                    live = tx.task(t.id)
                    if live is not None and runnable(live):
                        tx.update(replace(live, desired_state=TaskState.SHUTDOWN))
            return tx.create(make_task(
                cur, tid=self.reconciler.new_id(), slot=first.slot, node_id=node_id, now=tx.now,
                desired=TaskState.RUNNING if start_first else TaskState.READY,
                job_iteration=first.job_iteration))

        new = await self.store.update(create)

        def new_settled() -> bool:
            t = self._task(new.id)
            return t is None or t.status.state >= TaskState.RUNNING

        if not start_first:
            def old_stopped() -> bool:
                for t in old:
                    cur = self._task(t.id)
                    if cur is not None and cur.node_id and not ended(cur):
                        return False
                return True

            await self._wait_until(old_stopped)

            def go(tx: Tx) -> None:
                t = tx.task(new.id)
                if t is not None and t.desired_state == TaskState.READY:
                    tx.update(replace(t, desired_state=TaskState.RUNNING))

            await self.store.update(go)
            await self._wait_until(new_settled)
        else:
            await self._wait_until(new_settled)
            t = self._task(new.id)
            if t is not None and t.status.state == TaskState.RUNNING:
                def stop_old(tx: Tx) -> None:
                    for o in old:
                        live = tx.task(o.id)
                        if live is not None and runnable(live):
                            tx.update(replace(live, desired_state=TaskState.SHUTDOWN))

                await self.store.update(stop_old)
        t = self._task(new.id)
        ok = t is not None and t.status.state == TaskState.RUNNING
        return new.id, ok
