"""The leader's cron loop: start each scheduled service's runs at its ticks, once each.

Every decision is a pure function of the store and the clock, taken inside one write transaction (`step`): the
tick handled, the run it starts (the service's `CronStatus.iteration` goes up by one; the reconciler then creates
that iteration's tasks, shoal.manager.cron.view) and the ticks skipped are written together, in the service's own
`cron` field, which Raft replicates. A leader that dies before that entry commits leaves the tick to the next
leader; one that dies after has recorded it: either way the tick runs exactly once.

The loop wakes at the earliest tick due across the scheduled services, or when a service changes (a new schedule,
a trigger), and sleeps on the injected clock, so the simulation runs it on virtual time.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime

from shoal.clock import Clock, until_or_sleep
from shoal.errors import Unavailable
from shoal.manager.cron.config import CronConfig, cron_config_cached
from shoal.model.objects import CronStatus, Service, Task
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, Subscription, Tx, WatchOverflow

log = logging.getLogger(__name__)


def iso(t: float) -> str:
    """An epoch time as RFC 3339 in UTC, to the millisecond."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def active(t: Task) -> bool:
    """The task belongs to a run still going: meant to run or complete, and not ended."""
    return t.desired_state <= TaskState.COMPLETE and t.status.state < TaskState.COMPLETE


def _failed(ts: list[Task]) -> bool:
    return any(t.status.state in (TaskState.FAILED, TaskState.REJECTED) for t in ts)


def trim_runs(tx: Tx, svc: Service, cfg: CronConfig) -> int:
    """Delete the tasks of finished runs beyond the history limits (the newest succeeded and failed runs are
    kept, separately); return how many tasks went."""
    if cfg.history is None and cfg.failed_history is None:
        return 0
    runs: dict[int, list[Task]] = defaultdict(list)
    for t in tx.tasks(service_id=svc.id):
        runs[t.job_iteration or 0].append(t)
    kept = {False: 0, True: 0}
    deleted = 0
    for it in sorted(runs, reverse=True):
        ts = runs[it]
        if any(active(t) for t in ts):
            continue
        failed = _failed(ts)
        limit = cfg.failed_history if failed else cfg.history
        if limit is None or kept[failed] < limit:
            kept[failed] += 1
            continue
        for t in ts:
            tx.delete("task", t.id)
            deleted += 1
    return deleted


def step(tx: Tx, svc: Service) -> float | None:
    """Bring one service's schedule up to `tx.now`: anchor a new schedule, start the run a tick or a trigger asks
    for (or skip it), and write what was done. Returns when the service next needs looking at (None: never)."""
    cfg = cron_config_cached(svc.spec)
    if cfg is None:
        return None
    now = tx.now
    old = svc.cron
    st = old or CronStatus(trigger=cfg.trigger, force_update=svc.spec.task_template.force_update,
                           spec_version=svc.spec_version)
    if st.key != cfg.key:
        # A new schedule counts from when it was written (the service's last change), so a failover between
        # that write and this one loses no tick.
        anchor = svc.meta.updated_at
        st = replace(st, key=cfg.key, since=anchor, last_tick=anchor, next_run=cfg.schedule.next_after(anchor),
                     message=f"scheduled: next run at {iso(cfg.schedule.next_after(anchor))}")
    reason = ""
    if cfg.trigger != st.trigger:
        reason, st = "trigger", replace(st, trigger=cfg.trigger)
    force = svc.spec.task_template.force_update
    if force != st.force_update:
        reason, st = "force", replace(st, force_update=force)
    if st.requested > st.handled:
        reason, st = "api", replace(st, handled=st.requested)
    tick: float | None = None
    if st.next_run <= now:
        latest, count = cfg.schedule.latest_until(st.next_run, now)
        late = now - latest
        st = replace(st, last_tick=latest, next_run=cfg.schedule.next_after(latest))
        if cfg.deadline is not None and late > cfg.deadline:
            st = replace(st, skipped=st.skipped + count,
                         message=f"missed {count} tick(s): the newest, {iso(latest)}, is {late:.3f}s old, past the "
                                 f"deadline of {cfg.deadline:g}s")
        else:
            tick = latest
            st = replace(st, skipped=st.skipped + count - 1)
            if not reason:
                reason = "schedule" if count == 1 else "missed"
    tasks = tx.tasks(service_id=svc.id)
    if cfg.restart_on_update and svc.spec_version != st.spec_version:
        for t in tasks:
            if active(t) and t.spec_version < svc.spec_version:
                tx.update(replace(t, desired_state=TaskState.SHUTDOWN))
    st = replace(st, spec_version=svc.spec_version)
    if reason:
        running = [t for t in tx.tasks(service_id=svc.id) if active(t)]
        what = f"tick {iso(tick)}" if tick is not None else f"{reason} at {iso(now)}"
        if running and cfg.concurrency == "forbid":
            st = replace(st, skipped=st.skipped + 1,
                         message=f"skipped {what}: run {st.iteration} is still running")
        else:
            if cfg.concurrency == "replace":
                for t in running:
                    tx.update(replace(t, desired_state=TaskState.SHUTDOWN))
            trim_runs(tx, svc, cfg)
            after = f", {now - tick:.3f}s after its tick" if tick is not None else ""
            st = replace(st, iteration=st.iteration + 1, last_run=now, last_reason=reason,
                         message=f"run {st.iteration + 1} started ({reason}) at {iso(now)}{after}; "
                                 f"next run at {iso(st.next_run)}")
            log.info("cron: service %s: %s", svc.name, st.message)
    if st != old:
        tx.update(replace(svc, cron=st))
    return st.next_run


def cron_attrs(old: Service, new: Service) -> dict[str, str]:
    """The attributes of the service event a cron run or a skipped tick emits (empty for neither)."""
    o, n = old.cron, new.cron
    if n is None:
        return {}
    if o is None:
        o = CronStatus()
    if n.iteration != o.iteration:
        return {"cron.run": str(n.iteration), "cron.reason": n.last_reason, "cron.next": iso(n.next_run)}
    if n.skipped != o.skipped:
        return {"cron.skipped": str(n.skipped - o.skipped), "cron.message": n.message, "cron.next": iso(n.next_run)}
    return {}


class CronLoop:
    """The leader-only loop that runs `step` for every scheduled service whenever one is due or changed."""

    def __init__(self, store: MemoryStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def _step_all(self, tx: Tx) -> float | None:
        wake: float | None = None
        for svc in tx.services():
            if svc.pending_delete:
                continue
            nxt = step(tx, svc)
            if nxt is not None and (wake is None or nxt < wake):
                wake = nxt
        return wake

    async def run(self) -> None:
        while True:
            sub = self.store.watch(kinds=("service",))
            try:
                while True:
                    try:
                        wake = await self.store.update(self._step_all)
                    except Unavailable:
                        raise  # no longer leading: the term ends, the next leader takes over from the store
                    except Exception:
                        log.exception("cron loop: a step failed; retrying in 1s")
                        wake = self.clock.now() + 1.0
                    timeout = None if wake is None else max(0.0, wake - self.clock.now())
                    await _next_change_or(sub, self.clock, timeout)
            except WatchOverflow:
                log.warning("cron loop fell behind the store; resyncing")
            finally:
                sub.close()


async def _next_change_or(sub: Subscription, clock: Clock, timeout: float | None) -> None:
    """Return after the next store change `sub` sees (all queued ones consumed), or after `timeout` seconds."""
    if sub.drain():
        return
    await until_or_sleep(sub.get(), clock, timeout)  # a WatchOverflow is raised: the caller resyncs
    sub.drain()
