"""Admission of registrations on the leader: a rate, slots held for the nodes told to come back, and the real
agents under virtual time keeping to it when every node of a swarm registers at once."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from shoal.agent.agent import Agent
from shoal.errors import Deferred
from shoal.manager.admission import HOLD, Admission
from shoal.manager.dispatcher import Dispatcher
from shoal.model.objects import Node, NodeDescription, NodeStatus
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.clock import VirtualClock
from shoal.testing.fakeexec import FakeExecutor
from tests.support.dispatcher import running_leader


async def test_a_burst_is_taken_then_the_rest_get_slots_one_per_interval() -> None:
    clock = VirtualClock()
    a = Admission(clock, rate=10.0, burst=5.0)
    waits = [a.admit(f"n{i}") for i in range(12)]
    assert waits[:5] == [0.0] * 5  # the burst after a quiet spell
    assert waits[5:] == pytest.approx([0.1 * k for k in range(1, 8)])  # then one slot every 1/rate
    assert a.deferred == 7 and a.waiting() == 7


async def test_a_node_that_comes_back_when_told_is_taken_and_a_newcomer_queues_behind() -> None:
    clock = VirtualClock()
    a = Admission(clock, rate=1.0, burst=1.0)
    assert a.admit("first") == 0.0
    wait = a.admit("late")
    assert wait == pytest.approx(1.0)
    await clock.advance(0.4)
    assert a.admit("late") == pytest.approx(0.6)  # early: the same slot, not a new one
    assert a.admit("newcomer") == pytest.approx(1.6)  # behind the held slot, not in it
    await clock.advance(0.6)
    assert a.admit("late") == 0.0
    assert a.waiting() == 1


async def test_a_slot_nobody_claims_is_let_go() -> None:
    clock = VirtualClock()
    a = Admission(clock, rate=1.0, burst=1.0)
    a.admit("n0")
    assert a.admit("gone") == pytest.approx(1.0)  # never comes back
    await clock.advance(1.0 + HOLD + 0.1)
    assert a.admit("other") == 0.0
    assert a.waiting() == 0
    assert a.admit("gone") > 0.0  # a node back after its slot was let go queues again


async def test_a_new_term_starts_with_no_schedule() -> None:
    clock = VirtualClock()
    a = Admission(clock, rate=1.0, burst=1.0)
    a.admit("n0")
    assert a.admit("n1") > 0
    a.reset()
    assert a.admit("n1") == 0.0 and a.waiting() == 0


async def test_the_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Admission(VirtualClock(), 0.0)


async def test_a_swarm_registering_at_once_is_taken_at_the_leaders_rate() -> None:
    """60 real agents register with a leader that takes 10 registrations a second: the dispatcher takes at
    most a burst of 10 and then 10 a second, every agent has its session within the 6 s that needs, and a
    deferred agent registers again when its slot comes (not on its backoff, which grows to 8 s)."""
    nodes = 60

    def seed(tx: Tx) -> None:
        for i in range(nodes):
            tx.create(Node(id=f"n{i}", status=NodeStatus(state="unknown")))

    def make(store: MemoryStore, clock: VirtualClock) -> Dispatcher:
        return Dispatcher(store, clock, max_registrations=10.0)

    async with running_leader(seed, make, lambda d: d) as (clock, _store, d):
        taken: list[float] = []
        refused: Counter[str] = Counter()
        real_register = d.register

        async def register(node_id: str, description: NodeDescription, addr: str):  # type: ignore[no-untyped-def]
            try:
                terms = await real_register(node_id, description, addr)
            except Deferred:
                refused[node_id] += 1
                raise
            taken.append(clock.monotonic())
            return terms

        d.register = register  # type: ignore[method-assign]
        t0 = clock.monotonic()
        agents = [Agent(f"n{i}", FakeExecutor(), d, clock, random.Random(i)) for i in range(nodes)]
        runs = [asyncio.ensure_future(a.run()) for a in agents]
        try:
            await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents)), 3600)
            done = clock.monotonic() - t0
            assert len(d.sessions) == nodes
        finally:
            for r in runs:
                r.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
    assert len(taken) == nodes  # every node once
    assert d.admission.deferred == sum(refused.values()) >= nodes - 10
    assert max(refused.values()) == 1  # back at its slot, taken the first time
    assert done <= (nodes - 10) / 10.0 + 0.5
    per_second = Counter(int(t - t0) for t in taken)
    assert per_second[0] <= 10 + 10 and all(n <= 10 + 1 for s, n in per_second.items() if s > 0)
