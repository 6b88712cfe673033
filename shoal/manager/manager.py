"""A manager: the store, the control API, and the leader-only loops in one TaskGroup per term.

With one manager the term never ends; with Raft (issue 5) `run_leader` is started when this manager
becomes leader and cancelled when it steps down, and nothing else changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

from shoal.clock import Clock
from shoal.manager.allocator import Allocator
from shoal.manager.controlapi import ControlAPI
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.events import EventLog
from shoal.manager.logbroker import LogBroker
from shoal.manager.orchestrator.reconcile import Reconciler
from shoal.manager.orchestrator.runner import Orchestrator, constraint_checker
from shoal.manager.scheduler.runner import SchedulerRunner
from shoal.store.memory import MemoryStore

log = logging.getLogger(__name__)


class Manager:
    def __init__(self, store: MemoryStore, clock: Clock, rng: random.Random, *,
                 scheduler_strategy: str = "spread", events_path: Path | None = None) -> None:
        self.store = store
        self.clock = clock
        self.rng = rng
        self.scheduler_strategy = scheduler_strategy
        self.controlapi = ControlAPI(store, clock, rng)
        self.dispatcher = Dispatcher(store, clock)
        self.events = EventLog(store, clock, path=events_path)
        self.logbroker = LogBroker(store, clock)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="manager")

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.events.run(), name="events")
            tg.create_task(self.run_leader(), name="leader")

    async def run_leader(self) -> None:
        """Everything that only the leader runs, for as long as it leads."""
        reconciler = Reconciler(random.Random(self.rng.getrandbits(64)), constraint_checker())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.dispatcher.run(), name="dispatcher")
            tg.create_task(Allocator(self.store).run(), name="allocator")
            tg.create_task(SchedulerRunner(self.store, self.clock, random.Random(self.rng.getrandbits(64)),
                                           self.scheduler_strategy).run(), name="scheduler")
            tg.create_task(Orchestrator(self.store, self.clock, reconciler).run(), name="orchestrator")

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
