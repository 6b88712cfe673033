"""The store-driven shell around the pure scheduler: watch, decide, write decisions in one transaction.

It keeps the scheduler's node table current from events, collects PENDING tasks, and after each burst of
commits runs `Scheduler.schedule` and writes every decision in a single transaction. A placement whose task
changed meanwhile is undone in the scheduler's table. Tasks that cannot be placed keep their pending message and
are retried whenever a node or a task changes.

It is also a stage of the store's transactions (`MemoryStore.add_stage`): a task that a transaction makes
PENDING (the orchestrator creating it, the allocator done with it) is placed in that same transaction, so it
is written once, assigned, instead of once PENDING and again assigned (as Nomad's plan applier commits a
placement with the allocation). What it cannot place there stays PENDING for the loop above.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shoal.api.attachments import is_attachment
from shoal.clock import Clock
from shoal.manager.scheduler.core import Decision, Scheduler
from shoal.manager.stats import LeaderStats
from shoal.model.evolve import evolve
from shoal.model.objects import Task, TaskStatus
from shoal.model.state import TaskState
from shoal.store.memory import Commit, Event, MemoryStore, Tx, WatchOverflow

log = logging.getLogger(__name__)


def _active(t: Task) -> bool:
    return bool(t.node_id) and t.desired_state <= TaskState.COMPLETE and t.status.state < TaskState.COMPLETE \
        and not is_attachment(t)  # a plain container's network attachment uses nothing the scheduler counts


class SchedulerRunner:
    def __init__(self, store: MemoryStore, clock: Clock, rng: random.Random,
                 default_strategy: str = "spread", stats: LeaderStats | None = None) -> None:
        self.store = store
        self.stats = stats
        self.clock = clock
        self.rng = rng
        self.default_strategy = default_strategy
        self.pending: dict[str, Task] = {}
        self.core = Scheduler(rng, default_strategy=default_strategy)
        self._retry = False

    def _reset(self) -> None:
        self.core = Scheduler(self.rng, default_strategy=self.default_strategy)
        self.pending.clear()
        v = self.store.view()
        for n in v.nodes():
            self.core.upsert_node(n)
        for t in v.tasks():
            self._observe_task(None, t)

    def _observe_task(self, old: Task | None, t: Task | None) -> None:
        if old is not None and _active(old):
            self.core.remove_task(old)
        if t is None:
            if old is not None:
                self.pending.pop(old.id, None)
            return
        if _active(t):
            self.core.add_task(t)
        if t.status.state == TaskState.PENDING and t.desired_state <= TaskState.COMPLETE:
            self.pending[t.id] = t
        else:
            self.pending.pop(t.id, None)

    async def run(self) -> None:
        remove_stage = self.store.add_stage(self._stage)
        try:
            await self._run()
        finally:
            remove_stage()

    async def _run(self) -> None:
        while True:
            sub = self.store.watch(kinds=("node", "task"))
            self._reset()
            try:
                await self._tick()
                dirty = False
                async for item in sub:
                    if isinstance(item, Event):
                        dirty |= self._observe(item)
                    elif isinstance(item, Commit):
                        for more in sub.drain():
                            if isinstance(more, Event):
                                dirty |= self._observe(more)
                        if dirty and self.pending:
                            await self._tick()
                        dirty = False
            except WatchOverflow:
                log.warning("scheduler fell behind; resyncing")
            finally:
                sub.close()

    def _observe(self, ev: Event) -> bool:
        if ev.kind == "node":
            if ev.action == "remove":
                self.core.remove_node(ev.obj.id)
            elif ev.old is None or ev.old.spec != ev.obj.spec or ev.old.status != ev.obj.status \
                    or ev.old.description != ev.obj.description:
                self.core.upsert_node(ev.obj)
            else:
                return False
            return True
        if ev.action == "remove":
            self._observe_task(ev.obj, None)
        else:
            self._observe_task(ev.old, ev.obj)
        return True

    def _stage(self, tx: Tx, actions: list[tuple[str, str, Any]]) -> Callable[[], None] | None:
        """Place the tasks this transaction made PENDING, in it (see the module's docstring). Tasks already
        PENDING before it (the loop's, whose placement failed) are left to the loop."""
        committed = self.store.view()
        fresh: dict[str, Task] = {}
        for op, kind, t in actions:
            if kind != "task" or op == "remove" or t.status.state != TaskState.PENDING \
                    or t.desired_state > TaskState.COMPLETE or t.id in fresh:
                continue
            before = committed.task(t.id) if op == "update" else None
            if before is not None and before.status.state == TaskState.PENDING:
                continue
            cur = tx.task(t.id)  # as the transaction leaves it
            if cur is not None and cur.status.state == TaskState.PENDING and cur.desired_state <= TaskState.COMPLETE:
                fresh[t.id] = cur
        if not fresh:
            return None
        tasks = sorted(fresh.values(), key=lambda t: (t.service_id, t.spec_version, t.slot, t.id))
        t0 = self.clock.monotonic()
        decisions: list[Decision] = self.core.schedule(tasks, self.clock.now())
        if self.stats is not None:
            self.stats.pass_done(self.clock.monotonic() - t0)
        now = tx.now
        assigned = TaskStatus(timestamp=now, state=TaskState.ASSIGNED, message="scheduler assigned task to node")
        held: list[Task] = []  # the scheduler's table holds these placements until the commit's events confirm them
        for d in decisions:
            if d.node_id is None:
                continue  # left PENDING: the loop retries it and writes why it waits
            cur = fresh[d.task_id]
            tx.update(evolve(cur, node_id=d.node_id, status=assigned), check_version=False)
            held.append(cur)  # forgetting a placement needs the task's ID only
            if self.stats is not None:
                self.stats.placed(max(0.0, now - cur.meta.created_at))
        if not held:
            return None

        def undo() -> None:
            for t in held:
                self.core.remove_task(t)

        return undo

    async def _tick(self) -> None:
        if not self.pending:
            return
        tasks = sorted(self.pending.values(), key=lambda t: (t.service_id, t.spec_version, t.slot, t.id))
        # Global tasks come with their node; the scheduler only checks them against it.
        t0 = self.clock.monotonic()
        decisions: list[Decision] = self.core.schedule(tasks, self.clock.now())
        if self.stats is not None:
            self.stats.pass_done(self.clock.monotonic() - t0)
        now = self.clock.now()
        placed: list[float] = []  # seconds from creation to assignment of each task placed
        # one frozen status shared by every task assigned in this transaction
        assigned = TaskStatus(timestamp=now, state=TaskState.ASSIGNED, message="scheduler assigned task to node")

        def fn(tx: Tx) -> None:
            for d in decisions:
                cur = tx.task(d.task_id)
                if cur is None or cur.status.state != TaskState.PENDING or (cur.node_id and
                                                                            cur.node_id != d.node_id):
                    if d.node_id is not None and cur is not None:
                        self.core.remove_task(replace(cur, node_id=d.node_id))
                    continue
                if d.node_id is None:
                    # swarmkit puts the explanation in the status's Err (the ERROR column of `service ps`)
                    # and keeps the message ("pending task scheduling").
                    if cur.status.err != d.message:
                        tx.update(replace(cur, status=replace(cur.status, timestamp=now, err=d.message)),
                                  check_version=False)
                    continue
                tx.update(evolve(cur, node_id=d.node_id, status=assigned), check_version=False)
                placed.append(max(0.0, now - cur.meta.created_at))

        await self.store.update(fn)
        if self.stats is not None:
            for seconds in placed:
                self.stats.placed(seconds)
