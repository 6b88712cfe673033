"""The agent's sessions with a dispatcher: only the agent's own cancellation ends them for good."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from shoal.agent.agent import Agent
from shoal.clock import SystemClock
from shoal.manager.dispatcher import COMPLETE, Assignments
from shoal.model.objects import NodeDescription, TaskStatus
from shoal.testing.fakeexec import FakeExecutor


class _Dispatcher:
    """The first session's assignment stream fails with a CancelledError the agent did not ask for (what a
    call gives when the request it waits on was cancelled by some other task); the sessions after it
    stay open."""

    def __init__(self) -> None:
        self.registrations = 0
        self.registered_again = asyncio.Event()

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> float:
        self.registrations += 1
        if self.registrations > 1:
            self.registered_again.set()
        return 60.0

    async def heartbeat(self, node_id: str) -> float:
        return 60.0

    async def assignments(self, node_id: str) -> AsyncIterator[Assignments]:
        if self.registrations == 1:
            raise asyncio.CancelledError()
        yield Assignments(type=COMPLETE)
        await asyncio.Event().wait()  # the session stays open until the agent is stopped

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        return None


async def test_a_cancellation_not_meant_for_the_agent_ends_only_the_session() -> None:
    d = _Dispatcher()
    agent = Agent("n1", FakeExecutor(), d, SystemClock(), random.Random(1))
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(d.registered_again.wait(), 30)  # a bound for a hang, not a timing figure
        await asyncio.wait_for(agent.connected.wait(), 30)
        assert not running.done()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert running.cancelled()  # the agent's own cancellation still stops it
