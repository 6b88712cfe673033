"""Dispatcher sessions under virtual time: a node is down 3 heartbeat periods after its last heartbeat, or
STREAM_GRACE seconds after its session's connection closed unless it opened a new one first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from shoal.api.dispatch import MEAN_BEAT
from shoal.manager.dispatcher import REJOIN_RATE, STREAM_GRACE, Dispatcher
from shoal.model.objects import SECOND, Cluster, Node, NodeDescription, NodeStatus, SwarmSpec
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.clock import VirtualClock
from tests.support.dispatcher import running_dispatcher, running_leader


@pytest.fixture
async def env() -> AsyncIterator[tuple[VirtualClock, MemoryStore, Dispatcher]]:
    def seed(tx: Tx) -> None:
        tx.create(Node(id="n1", status=NodeStatus(state="unknown")))
        tx.create(Node(id="n2", status=NodeStatus(state="unknown")))

    async with running_dispatcher(seed) as e:
        yield e


def state(store: MemoryStore, nid: str) -> str:
    n = store.view().node(nid)
    assert n is not None
    return n.status.state


async def stream(d: Dispatcher, nid: str) -> asyncio.Task[None]:
    async def consume() -> None:
        async for _ in d.assignments(nid):
            pass

    t = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    return t


async def test_closed_connection_means_down_after_the_grace(
        env: tuple[VirtualClock, MemoryStore, Dispatcher]) -> None:
    clock, store, d = env
    await d.register("n1", NodeDescription(hostname="n1"), "")
    s = await stream(d, "n1")
    await clock.sleep(1.0)
    assert state(store, "n1") == "ready"
    t0 = clock.monotonic()
    s.cancel()  # the worker's process died: its connection closed
    while state(store, "n1") != "down":
        await clock.sleep(0.1)
    waited = clock.monotonic() - t0
    assert STREAM_GRACE <= waited <= STREAM_GRACE + 1.0  # well before 3 heartbeat periods (15 s)


async def test_a_node_that_reconnects_in_time_stays_up(
        env: tuple[VirtualClock, MemoryStore, Dispatcher]) -> None:
    clock, store, d = env
    await d.register("n1", NodeDescription(hostname="n1"), "")
    s = await stream(d, "n1")
    s.cancel()
    await clock.sleep(STREAM_GRACE / 3)
    await d.register("n1", NodeDescription(hostname="n1"), "")  # a new session, as an agent's retry makes
    s2 = await stream(d, "n1")
    for _ in range(10):
        await clock.sleep(1.0)
        await d.heartbeat("n1")
    assert state(store, "n1") == "ready"
    s2.cancel()


async def test_silent_node_with_an_open_connection_is_down_after_three_periods(
        env: tuple[VirtualClock, MemoryStore, Dispatcher]) -> None:
    clock, store, d = env
    await d.register("n2", NodeDescription(hostname="n2"), "")
    s = await stream(d, "n2")  # the connection stays open but nothing answers (a frozen process, a partition)
    t0 = clock.monotonic()
    while state(store, "n2") != "down":
        await clock.sleep(0.1)
    assert 15.0 <= clock.monotonic() - t0 <= 17.6  # 3 periods of 5 s, checked every half period at most
    s.cancel()


async def test_a_shorter_period_counts_from_the_next_heartbeat(
        env: tuple[VirtualClock, MemoryStore, Dispatcher]) -> None:
    """`docker swarm update --dispatcher-heartbeat 1s` while a node heartbeats every 5 s: the node learns the new
    period with its next heartbeat, so until then its session expires after 3 of the period it was told."""
    clock, store, d = env

    def period(seconds: int) -> Callable[[Tx], None]:
        def fn(tx: Tx) -> None:
            c = tx.cluster()
            if c is None:
                tx.create(Cluster(id="c1", spec=SwarmSpec(heartbeat_period=seconds * SECOND)))
            else:
                tx.update(replace(c, spec=replace(c.spec, heartbeat_period=seconds * SECOND)))
        return fn

    await store.update(period(5))
    told = (await d.register("n1", NodeDescription(hostname="n1"), "")).period
    s = await stream(d, "n1")
    assert told == 5.0
    await clock.sleep(1.0)
    await store.update(period(1))
    for _ in range(4):  # the agent keeps the period it was told until its next heartbeat answers otherwise
        await clock.sleep(told)
        assert state(store, "n1") == "ready"
        told = (await d.heartbeat("n1")).period
    assert told == 1.0
    s.cancel()


async def test_past_the_heartbeat_budget_the_period_grows_with_the_nodes() -> None:
    """Nomad's rule: the nodes together beat at most `max_heartbeats` times a second, so 40 nodes against a
    budget of 2 a second are told 40 / (2 * MEAN_BEAT) seconds, not the configured 5 s, and a silent node is
    down three of those periods after its last heartbeat, not 15 s after it. The spread each node is asked to
    register again over after its session ends is nodes / REJOIN_RATE."""

    def seed(tx: Tx) -> None:
        tx.create(Cluster(id="c1", spec=SwarmSpec(heartbeat_period=5 * SECOND)))
        for i in range(40):
            tx.create(Node(id=f"n{i}", status=NodeStatus(state="unknown")))

    def make(store: MemoryStore, clock: VirtualClock) -> Dispatcher:
        return Dispatcher(store, clock, max_heartbeats=2.0)

    async with running_leader(seed, make, lambda d: d) as (clock, store, d):
        grown = 40 / (2.0 * MEAN_BEAT)
        assert d.configured_period() == 5.0
        terms = await d.register("n1", NodeDescription(hostname="n1"), "")
        assert terms.period == pytest.approx(grown)
        assert terms.rejoin_spread == pytest.approx(40 / REJOIN_RATE)
        s = await stream(d, "n1")
        await clock.sleep(3 * 5.0 + 1.0)  # past three configured periods: still within three grown ones
        assert state(store, "n1") == "ready"
        assert (await d.heartbeat("n1")).period == pytest.approx(grown)
        t0 = clock.monotonic()
        while state(store, "n1") != "down":
            await clock.sleep(0.5)
        assert 3 * grown <= clock.monotonic() - t0 <= 3 * grown + 1.0
        s.cancel()

    def small(tx: Tx) -> None:
        tx.create(Cluster(id="c1", spec=SwarmSpec(heartbeat_period=5 * SECOND)))
        tx.create(Node(id="n1", status=NodeStatus(state="unknown")))

    async with running_leader(small, make, lambda d: d) as (clock, store, d):
        assert (await d.register("n1", NodeDescription(hostname="n1"), "")).period == 5.0  # within the budget
