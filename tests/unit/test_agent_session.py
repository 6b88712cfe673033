"""The agent's sessions with a dispatcher: only the agent's own cancellation ends them for good."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from shoal.agent.agent import Agent
from shoal.api.dispatch import COMPLETE, INCREMENTAL, Assignments, SessionTerms
from shoal.clock import SystemClock
from shoal.errors import NotLeader
from shoal.model.objects import NodeDescription, Task, TaskSpec, TaskStatus
from shoal.model.state import TaskState
from shoal.testing.clock import VirtualClock
from shoal.testing.fakeexec import FakeBehavior, FakeExecutor


class _Dispatcher:
    """The first session's assignment stream fails with a CancelledError the agent did not ask for (what a
    call gives when the request it waits on was cancelled by some other task); the sessions after it
    stay open."""

    def __init__(self) -> None:
        self.registrations = 0
        self.registered_again = asyncio.Event()

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        self.registrations += 1
        if self.registrations > 1:
            self.registered_again.set()
        return SessionTerms(60.0)

    async def heartbeat(self, node_id: str, usage: object = None) -> SessionTerms:
        return SessionTerms(60.0)

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


class _LeaderLost:
    """Session 1 ends as a leadership loss ends it: the heartbeat is refused and, in the same turn of the loop,
    the assignment stream closes (the dispatcher expired its sessions). Session 2 assigns a task and then
    removes it, so the agent reaps the task's runner. Session 3 is the proof that the agent still lives."""

    def __init__(self) -> None:
        self.registrations = 0
        self.third = asyncio.Event()
        self._stream_closes = asyncio.Event()
        self.removed = asyncio.Event()

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        self.registrations += 1
        if self.registrations == 3:
            self.third.set()
        return SessionTerms(0.0)  # heartbeat at once

    async def heartbeat(self, node_id: str, usage: object = None) -> SessionTerms:
        if self.registrations == 1:
            self._stream_closes.set()  # the stream's end is due in this turn of the loop, after this refusal
            raise NotLeader("this manager is not the swarm leader: its dispatcher is not running")
        await asyncio.Event().wait()
        return SessionTerms(60.0)

    async def assignments(self, node_id: str) -> AsyncIterator[Assignments]:
        if self.registrations == 1:
            await self._stream_closes.wait()
            return
        if self.registrations == 2:
            task = Task(id="t1", node_id=node_id, spec=TaskSpec(), desired_state=TaskState.RUNNING,
                        status=TaskStatus(state=TaskState.ASSIGNED))
            yield Assignments(type=COMPLETE, tasks=(task,))
            yield Assignments(type=INCREMENTAL, removed_tasks=("t1",))
            self.removed.set()
            return
        yield Assignments(type=COMPLETE)
        await asyncio.Event().wait()

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        return None


async def test_a_session_ended_by_a_leadership_loss_leaves_the_agent_working() -> None:
    """Python 3.11's TaskGroup leaves a cancellation request on its parent when a child fails while the group
    is exiting: a session whose stream closed as its heartbeat was refused left the agent's session loop
    "being cancelled" for good, and the next reaped runner's cancellation then ended that loop silently."""
    d = _LeaderLost()
    agent = Agent("n1", FakeExecutor(behavior=FakeBehavior(exit_code=None)), d, SystemClock(), random.Random(1))
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(d.third.wait(), 30)  # a bound for a hang, not a timing figure
        assert d.removed.is_set() and "t1" not in agent.runners
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


class _Swallower:
    """Registration loses the caller's cancellation, as a library call can (it catches CancelledError and
    returns normally)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        return SessionTerms(60.0)

    async def heartbeat(self, node_id: str, usage: object = None) -> SessionTerms:
        await asyncio.Event().wait()
        return SessionTerms(60.0)

    async def assignments(self, node_id: str) -> AsyncIterator[Assignments]:
        yield Assignments(type=COMPLETE)
        await asyncio.Event().wait()

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        return None


async def test_a_cancellation_a_call_swallowed_still_stops_the_agent() -> None:
    """`docker swarm leave` hung: the agent was cancelled while registering, the call lost the cancellation,
    and the session went on to wait for its stream for ever, holding up the leave."""
    d = _Swallower()
    agent = Agent("n1", FakeExecutor(), d, SystemClock(), random.Random(1))
    running = asyncio.create_task(agent.run())
    await asyncio.wait_for(d.entered.wait(), 30)
    running.cancel()
    done, _ = await asyncio.wait({running}, timeout=10)  # a bound for a hang, not a timing figure
    if not done:
        running.cancel()
    assert done and running.cancelled()


class _NewLeader:
    """Each session lasts one virtual second and then ends, as a leader change ends every node's session at
    once; the dispatcher asked for re-registrations spread over `SPREAD` seconds."""

    SPREAD = 10.0

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.registered: list[float] = []
        self.ended: list[float] = []
        self.second = asyncio.Event()

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        self.registered.append(self.clock.monotonic())
        if len(self.registered) == 2:
            self.second.set()
        return SessionTerms(60.0, rejoin_spread=self.SPREAD)

    async def heartbeat(self, node_id: str, usage: object = None) -> SessionTerms:
        await asyncio.Event().wait()
        return SessionTerms(60.0, rejoin_spread=self.SPREAD)

    async def assignments(self, node_id: str) -> AsyncIterator[Assignments]:
        yield Assignments(type=COMPLETE)
        await self.clock.sleep(1.0)
        self.ended.append(self.clock.monotonic())

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        return None


async def test_after_a_session_ends_nodes_register_again_spread_as_the_dispatcher_asked() -> None:
    """Without the spread every node of a large cluster registers with a new leader within 0.2 s of losing the
    old one; with it, each waits a random point of the spread, so 40 agents' second registrations come over
    the whole of it, none later."""
    clock = VirtualClock()
    gaps: list[float] = []
    async with clock.autojump():
        for seed in range(40):
            d = _NewLeader(clock)
            agent = Agent("n1", FakeExecutor(), d, clock, random.Random(seed))
            running = asyncio.create_task(agent.run())
            try:
                await d.second.wait()
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
            gaps.append(d.registered[1] - d.ended[0])
    assert all(0.1 <= g <= _NewLeader.SPREAD + 0.2 for g in gaps)
    assert min(gaps) < _NewLeader.SPREAD / 4 and max(gaps) > _NewLeader.SPREAD * 3 / 4
