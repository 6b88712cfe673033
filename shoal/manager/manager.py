"""A manager: the store, the control API, and the leader-only loops in one TaskGroup per term.

Every manager runs the event log (it only reads the store, which every manager replicates). The leader-only
loops (dispatcher, allocator, scheduler, orchestrator, and whatever other components registered with
`add_leader_loop`) run in one TaskGroup started by `set_leader(True)` (Raft says this manager leads and has
applied everything committed before its term) and cancelled by `set_leader(False)`; nothing else changes
between a one-manager swarm and a replicated one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from shoal.clock import Clock
from shoal.errors import Unavailable
from shoal.manager.allocator import Allocator
from shoal.manager.autoscale import Autoscaler
from shoal.manager.controlapi import ControlAPI
from shoal.manager.cron.loop import CronLoop
from shoal.manager.dispatcher import DEFAULT_MAX_HEARTBEATS, DEFAULT_MAX_REGISTRATIONS, Dispatcher
from shoal.manager.events import EventLog
from shoal.manager.logbroker import LogBroker
from shoal.manager.orchestrator.reconcile import Reconciler
from shoal.manager.orchestrator.runner import Orchestrator, constraint_checker
from shoal.manager.scheduler.runner import SchedulerRunner
from shoal.manager.stats import LeaderStats
from shoal.store.memory import MemoryStore
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)

LeaderLoop = Callable[[], Coroutine[Any, Any, None]]


class Manager:
    def __init__(self, store: MemoryStore, clock: Clock, rng: random.Random, *,
                 scheduler_strategy: str = "spread", events_path: Path | None = None,
                 max_heartbeats: float = DEFAULT_MAX_HEARTBEATS,
                 max_registrations: float = DEFAULT_MAX_REGISTRATIONS) -> None:
        self.store = store
        self.clock = clock
        self.rng = rng
        self.scheduler_strategy = scheduler_strategy
        self.controlapi = ControlAPI(store, clock, rng)
        self.dispatcher = Dispatcher(store, clock, max_heartbeats=max_heartbeats,
                                     max_registrations=max_registrations)
        self.stats = LeaderStats()  # what the leader-only loops count and time, across terms (the metrics')
        self.events = EventLog(store, clock, path=events_path)
        self.logbroker = LogBroker(store, clock)
        self._task: asyncio.Task[None] | None = None
        self._extra_loops: list[tuple[str, LeaderLoop]] = []
        self._want_leader = False
        self._leadership_changed = asyncio.Event()
        self.leader_terms = 0  # how many times the leader-only loops were started
        self.leading = False  # the leader-only loops are running now

    def add_leader_loop(self, name: str, loop: LeaderLoop) -> None:
        """Run `loop()` alongside the leader-only loops, in every term this manager leads."""
        self._extra_loops.append((name, loop))

    def start(self, *, leader: bool = False) -> None:
        self._want_leader = leader
        self._leadership_changed.set()
        self._task = asyncio.create_task(self._run(), name="manager")

    def set_leader(self, leader: bool) -> None:
        """Raft's leadership notification (synchronous): the supervisor starts or cancels the loops."""
        self._want_leader = leader
        self._leadership_changed.set()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.events.run(), name="events")
            tg.create_task(self._supervise(), name="leadership")

    async def _supervise(self) -> None:
        term: asyncio.Task[None] | None = None
        try:
            while True:
                await self._leadership_changed.wait()
                self._leadership_changed.clear()
                if term is not None and term.done():
                    if not term.cancelled():
                        term.exception()  # retrieved: _lead logged it
                    term = None
                    if self._want_leader:
                        await self.clock.sleep(1.0)  # a loop failed (logged): start the term's loops again
                if self._want_leader and term is None:
                    self.leader_terms += 1
                    log.info("this manager leads: starting the leader-only loops (term %d)", self.leader_terms)
                    term = asyncio.create_task(self._lead(), name=f"leader-{self.leader_terms}")
                    term.add_done_callback(lambda _t: self._leadership_changed.set())
                elif not self._want_leader and term is not None:
                    log.info("this manager no longer leads: stopping the leader-only loops")
                    await cancel_and_wait(term)
                    term = None
        finally:
            if term is not None:
                await cancel_and_wait(term)

    async def _lead(self) -> None:
        self.leading = True
        try:
            await self.run_leader()
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            if _leadership_lost(e):
                # A loop's write failed because this manager stopped leading: the term's normal end.
                log.info("the leader-only loops stopped: %s", _first_leaf(e))
                return
            # A leader loop failed: this manager cannot lead properly; log it (the term ends with it).
            log.exception("a leader-only loop failed")
            raise
        finally:
            self.leading = False

    async def run_leader(self) -> None:
        """Everything that only the leader runs, for as long as it leads."""
        reconciler = Reconciler(random.Random(self.rng.getrandbits(64)), constraint_checker())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.dispatcher.run(), name="dispatcher")
            tg.create_task(Allocator(self.store).run(), name="allocator")
            tg.create_task(SchedulerRunner(self.store, self.clock, random.Random(self.rng.getrandbits(64)),
                                           self.scheduler_strategy, stats=self.stats).run(), name="scheduler")
            tg.create_task(Orchestrator(self.store, self.clock, reconciler, self.stats).run(), name="orchestrator")
            tg.create_task(Autoscaler(self.store, self.clock, self.controlapi, self.dispatcher.current_usage,
                                      stats=self.stats).run(), name="autoscaler")
            tg.create_task(CronLoop(self.store, self.clock).run(), name="cron")
            for name, loop in self._extra_loops:
                tg.create_task(loop(), name=name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("manager stopped with an error")
            self._task = None


def _leadership_lost(e: BaseException) -> bool:
    """Whether every error in `e` is a write refused for want of a leader (NotLeader, a lost proposal)."""
    if isinstance(e, BaseExceptionGroup):
        return all(_leadership_lost(x) for x in e.exceptions)
    return isinstance(e, Unavailable)


def _first_leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e

