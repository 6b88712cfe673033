"""RaftNode: three managers' stores replicated over the in-memory transport, under virtual time."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from shoal.clock import SystemClock
from shoal.errors import Unavailable
from shoal.manager.raft import DEFAULT_CATCHUP_ENTRIES
from shoal.manager.raft.core import Message, MsgType
from shoal.manager.raft.node import NotLeaderError, ProposalLost, RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import MemoryStorage, Storage, bootstrap
from shoal.manager.raft.transport import InMemoryHub
from shoal.model.objects import Annotations, Service, ServiceSpec
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.clock import VirtualClock
from tests.support.wait import eventually

IDS = (1, 2, 3)


def svc(sid: str) -> Service:
    return Service(id=sid, spec=ServiceSpec(annotations=Annotations(name=sid)))


def create(sid: str) -> Callable[[Tx], Service]:
    return lambda tx: tx.create(svc(sid))


def has(store: MemoryStore, sid: str) -> bool:
    return store.view().get("service", sid) is not None


class Cluster:
    def __init__(self, clock: VirtualClock, tmp: Path | None = None, snapshot_interval: int = 10_000,
                 catchup_entries: int = DEFAULT_CATCHUP_ENTRIES, **node_args: Any) -> None:
        self.clock = clock
        self.node_args = node_args
        self.tmp = tmp
        self.snapshot_interval = snapshot_interval
        self.catchup_entries = catchup_entries
        self.hub = InMemoryHub(clock)
        self.storages: dict[int, Storage] = {}
        self.nodes: dict[int, RaftNode] = {}
        self.stores: dict[int, MemoryStore] = {}
        self.leadership: dict[int, list[bool]] = {i: [] for i in IDS}
        for i in IDS:
            st = self.open_storage(i)
            bootstrap(st, IDS)
            self.storages[i] = st

    def open_storage(self, i: int) -> Storage:
        return SqliteStorage(self.tmp / f"m{i}") if self.tmp is not None else MemoryStorage()

    async def start(self, i: int) -> None:
        node = RaftNode(i, self.storages[i], self.hub.endpoint(i), self.clock, rng=random.Random(i),
                        snapshot_interval=self.snapshot_interval, catchup_entries=self.catchup_entries,
                        **self.node_args)
        store = MemoryStore(node, self.clock)
        node.attach(store)
        node.add_leadership_listener(self.leadership[i].append)
        self.nodes[i], self.stores[i] = node, store
        await node.start()

    async def start_all(self) -> None:
        for i in IDS:
            await self.start(i)

    async def stop_all(self) -> None:
        for n in self.nodes.values():
            await n.stop()

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = self.clock.elapsed + timeout
        while not cond():
            if self.clock.elapsed > deadline:
                raise AssertionError("condition not reached in virtual time")
            await self.clock.sleep(0.05)

    async def leader(self, among: tuple[int, ...] = IDS) -> RaftNode:
        await self.wait_for(lambda: any(self.nodes[i].is_leader for i in among))
        (lead,) = [self.nodes[i] for i in among if self.nodes[i].is_leader]
        return lead

    async def leader_with_lagging_follower(self, writes: int) -> tuple[RaftNode, int]:
        """All started; the leader, and a follower cut off while the leader wrote services s0..s<writes-1>."""
        await self.start_all()
        lead = await self.leader()
        lag = next(i for i in IDS if i != lead.id)
        self.hub.isolate(lag)
        for k in range(writes):
            await self.stores[lead.id].update(create(f"s{k}"))
        return lead, lag


@pytest.fixture
async def clock() -> AsyncIterator[VirtualClock]:
    c = VirtualClock()
    async with c.autojump():
        yield c


async def test_election_replication_and_follower_refusal(clock: VirtualClock) -> None:
    c = Cluster(clock)
    await c.start_all()
    lead = await c.leader()
    t0 = clock.elapsed
    await c.stores[lead.id].update(create("s1"))
    commit_latency = clock.elapsed - t0
    await c.wait_for(lambda: all(has(s, "s1") for s in c.stores.values()))
    assert commit_latency < 0.05  # no tick needed: proposals go out at the next Ready
    assert c.leadership[lead.id] == [True]

    follower = next(i for i in IDS if i != lead.id)
    with pytest.raises(NotLeaderError) as err:
        await c.stores[follower].update(create("s2"))
    assert err.value.leader == lead.id and isinstance(err.value, Unavailable)
    assert not has(c.stores[follower], "s2")

    # Read-your-writes through another manager: a read barrier on a follower sees the leader's write.
    await c.stores[lead.id].update(create("s3"))
    index = await c.nodes[follower].read_barrier()
    assert index >= c.stores[lead.id].applied_index and has(c.stores[follower], "s3")
    assert await lead.read_barrier() >= index
    await c.stop_all()


async def test_partitioned_leader_steps_down_and_catches_up(clock: VirtualClock) -> None:
    c = Cluster(clock)
    await c.start_all()
    old = await c.leader()
    await c.stores[old.id].update(create("before"))
    await c.wait_for(lambda: all(has(s, "before") for s in c.stores.values()))

    c.hub.isolate(old.id)
    t0 = clock.elapsed
    pending = asyncio.create_task(c.stores[old.id].update(create("lost")))
    majority = tuple(i for i in IDS if i != old.id)
    new = await c.leader(majority)
    failover = clock.elapsed - t0
    with pytest.raises(ProposalLost):
        await pending
    assert not old.is_leader and c.leadership[old.id] == [True, False]
    assert failover < 5.0, failover

    for k in range(5):
        await c.stores[new.id].update(create(f"after{k}"))
    # The old leader, alone, cannot commit anything.
    with pytest.raises(Unavailable):
        await c.stores[old.id].update(create("minority"))

    c.hub.heal()
    await c.wait_for(lambda: all(has(c.stores[old.id], f"after{k}") for k in range(5)))
    for s in c.stores.values():
        assert not has(s, "lost") and not has(s, "minority") and has(s, "before")
    assert (await c.leader()).id == new.id  # pre-vote: the returning node did not depose it
    assert {c.stores[i].version for i in IDS} == {c.stores[new.id].version}
    await c.stop_all()


async def test_lagging_follower_catches_up_by_snapshot(clock: VirtualClock) -> None:
    # A catch-up tail of 2 entries: the follower, 20 writes behind, is behind the tail too.
    c = Cluster(clock, snapshot_interval=5, catchup_entries=2)
    lead, lag = await c.leader_with_lagging_follower(20)
    assert lead.snapshots_taken >= 3 and lead.core.first_index > 10
    c.hub.heal()
    await c.wait_for(lambda: all(has(c.stores[lag], f"s{k}") for k in range(20)))
    assert c.nodes[lag].snapshots_installed >= 1
    assert c.stores[lag].version == c.stores[lead.id].version
    # And it keeps following normally afterwards.
    await c.stores[lead.id].update(create("later"))
    await c.wait_for(lambda: has(c.stores[lag], "later"))
    await c.stop_all()


async def test_a_follower_a_few_entries_behind_a_snapshot_gets_entries_not_the_snapshot(clock: VirtualClock) -> None:
    # Issue 15 §2 follow-up: a snapshot used to compact the log right at its index, so a follower only a few
    # entries behind it (a size-triggered snapshot: tens of MiB) was sent the whole snapshot. The log now keeps
    # a catch-up tail below the snapshot (DEFAULT_CATCHUP_ENTRIES), as etcd does.
    c = Cluster(clock, snapshot_interval=5)
    lead, lag = await c.leader_with_lagging_follower(8)
    snap_index = lead.core.snapshot_meta.index
    assert lead.snapshots_taken >= 1 and c.nodes[lag].applied < snap_index
    assert lead.core.first_index <= c.nodes[lag].applied + 1  # the tail still holds what the follower lacks
    c.hub.heal()
    await c.wait_for(lambda: all(has(c.stores[lag], f"s{k}") for k in range(8)))
    assert c.nodes[lag].snapshots_installed == 0
    assert c.stores[lag].version == c.stores[lead.id].version
    await c.stop_all()


async def test_restart_from_sqlite_restores_the_store(clock: VirtualClock, tmp_path: Path) -> None:
    c = Cluster(clock, tmp_path, snapshot_interval=4)
    await c.start_all()
    lead = await c.leader()
    for k in range(10):
        await c.stores[lead.id].update(create(f"s{k}"))
    await c.wait_for(lambda: all(has(s, "s9") for s in c.stores.values()))

    # Restart a follower, cut off from the others: its store comes back from its own disk.
    f = next(i for i in IDS if i != lead.id)
    await c.nodes[f].stop()
    st = c.storages[f]
    assert isinstance(st, SqliteStorage)
    st.close()
    c.hub.isolate(f)
    c.storages[f] = SqliteStorage(tmp_path / f"m{f}")
    await c.start(f)
    await c.wait_for(lambda: all(has(c.stores[f], f"s{k}") for k in range(10)), timeout=1.0)
    c.hub.heal()
    await c.stores[lead.id].update(create("s10"))
    await c.wait_for(lambda: has(c.stores[f], "s10"))

    # Then the whole cluster: every store comes back and a leader is elected again.
    await c.stop_all()
    for i in IDS:
        s = c.storages[i]
        assert isinstance(s, SqliteStorage)
        s.close()
        c.storages[i] = SqliteStorage(tmp_path / f"m{i}")
        await c.start(i)
    lead = await c.leader()
    await c.wait_for(lambda: all(has(s, "s10") for s in c.stores.values()))
    await c.stores[lead.id].update(create("s11"))
    await c.wait_for(lambda: all(has(s, "s11") for s in c.stores.values()))
    await c.stop_all()
    for s in c.storages.values():
        assert isinstance(s, SqliteStorage)
        s.close()


async def test_snapshots_taken_off_the_loop_are_durable_and_restore(tmp_path: Path) -> None:
    from shoal.clock import SystemClock
    from shoal.manager.raft.transport import NullTransport

    clock = SystemClock()
    storage = SqliteStorage(tmp_path)
    bootstrap(storage, [1])
    node = RaftNode(1, storage, NullTransport(), clock, rng=random.Random(1), snapshot_interval=50,
                    snapshot_in_thread=True)
    store = MemoryStore(node, clock)
    node.attach(store)
    await node.start()
    await node.leader_event.wait()
    for i in range(120):
        await store.update(create(f"s{i}"))
    await eventually(lambda: node.snapshots_taken >= 2, 10, interval=0.01, what="two snapshots taken")
    await node.stop()
    storage.close()

    again = SqliteStorage(tmp_path)
    snap = again.load_snapshot()
    assert snap is not None and snap.meta.index >= 100
    node2 = RaftNode(1, again, NullTransport(), clock, rng=random.Random(1))
    store2 = MemoryStore(node2, clock)
    node2.attach(store2)
    await node2.start()
    await node2.leader_event.wait()
    assert sorted(s.id for s in store2.view().services()) == sorted(f"s{i}" for i in range(120))
    await node2.stop()
    again.close()


class StallingClock:
    """A virtual clock whose monotonic time can jump while no code runs: what a stalled loop or process sees."""

    def __init__(self, base: VirtualClock) -> None:
        self.base = base
        self.lost = 0.0

    def now(self) -> float:
        return self.base.now() + self.lost

    def monotonic(self) -> float:
        return self.base.monotonic() + self.lost

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)


async def test_a_stalled_loop_is_logged_with_its_length(clock: VirtualClock,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    st = MemoryStorage()
    bootstrap(st, (1,))
    stalling = StallingClock(clock)
    node = RaftNode(1, st, InMemoryHub(clock).endpoint(1), stalling, rng=random.Random(1))
    node.attach(MemoryStore(node, stalling))
    await node.start()
    try:
        await clock.run_for(3.0)  # ticks on time: nothing said
        assert not [r for r in caplog.records if "stalled" in r.getMessage()]
        stalling.lost += 0.8  # more than half the 1 s election timeout passes between two ticks
        await clock.run_for(0.3)
        said = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
        assert len(said) == 1 and "stalled for 800 ms" in said[0] and "1000 ms" in said[0], said
    finally:
        await node.stop()


class HeldSyncStorage(MemoryStorage):
    """A MemoryStorage whose fsync, once `hold` is set, waits in its worker thread until `release` (one on the
    event loop's thread is not held, so that a shell syncing there cannot hang the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.release = threading.Event()
        self.held = threading.Event()  # a sync is waiting on `release` now

    def sync(self) -> None:
        if self.hold and threading.current_thread() is not threading.main_thread():
            self.held.set()
            self.release.wait()
            self.held.clear()
        super().sync()


async def test_a_leader_sends_its_appends_before_its_own_fsync_and_counts_itself_once_synced() -> None:
    # etcd/raft's parallel leader write (parallel_leader_write, the daemon's): the leader's entries reach a
    # follower, and its answer the leader, while the leader's own fsync is still running; with one follower
    # cut off, that follower's answer alone is not a majority: the entry commits only once the leader's fsync
    # is done.
    clock = SystemClock()
    hub = InMemoryHub(clock)
    storages = {i: HeldSyncStorage() for i in IDS}
    nodes: dict[int, RaftNode] = {}
    stores: dict[int, MemoryStore] = {}
    for i in IDS:
        bootstrap(storages[i], IDS)
        nodes[i] = RaftNode(i, storages[i], hub.endpoint(i), clock, rng=random.Random(i),
                            parallel_leader_write=True)
        stores[i] = MemoryStore(nodes[i], clock)
        nodes[i].attach(stores[i])
        await nodes[i].start()
    try:
        found = await eventually(lambda: next((n for n in nodes.values() if n.is_leader), None), timeout=10)
        assert found is not None
        lead = found
        follower, cut = (i for i in IDS if i != lead.id)
        hub.isolate(cut)
        storages[lead.id].hold = True
        write = asyncio.create_task(stores[lead.id].update(create("s1")))
        index = await eventually(lambda: lead.core.last_index if lead.core.last_index > lead.core.commit else 0)
        pr = lead.core.progress(follower)
        assert pr is not None
        await eventually(lambda: pr.match >= index)  # stored by the follower, its answer stepped by the leader
        assert storages[lead.id].held.is_set()  # ... while the leader's own fsync is still waiting
        assert lead.core.commit < index and not write.done()  # one of three is not a majority
        storages[lead.id].release.set()
        await write
        assert lead.core.commit >= index and has(stores[lead.id], "s1")
    finally:
        for s in storages.values():
            s.release.set()
        for n in nodes.values():
            await n.stop()


def step_then_ready_now(c: Cluster, i: int, seen: list[tuple[int, int, int, int]]) -> None:
    """Node i's receiver becomes: step the message, then (an append with entries) `ready_now`, noting its last
    stored index before and after, how many messages it sent meanwhile, and the append's last index."""
    node = c.nodes[i]

    def recv(m: Message) -> None:
        node.step(m)
        if m.type == MsgType.APPEND and m.entries:
            before, sent = node.storage.last_index(), c.hub.sent
            node.ready_now()
            seen.append((before, node.storage.last_index(), c.hub.sent - sent, m.entries[-1].index))

    c.hub._receivers[i] = recv


async def followers_ready_now(c: Cluster, *, persist_in_thread: bool = False
                              ) -> tuple[RaftNode, list[tuple[int, int, int, int]]]:
    """The leader, and what its followers' `ready_now` did with each append (see `step_then_ready_now`)."""
    lead = await c.leader()
    seen: list[tuple[int, int, int, int]] = []
    for i in IDS:
        if i != lead.id:
            c.nodes[i].persist_in_thread = persist_in_thread
            step_then_ready_now(c, i, seen)
    return lead, seen


async def test_a_follower_stores_and_answers_an_append_in_the_turn_it_arrives(clock: VirtualClock) -> None:
    # What the gRPC transport does after each batch: the follower's Ready (store the entries, answer) is handled
    # in the receiving turn, not left for the Ready loop's next one.
    c = Cluster(clock)
    await c.start_all()
    try:
        lead, seen = await followers_ready_now(c)
        for k in range(3):
            await c.stores[lead.id].update(create(f"s{k}"))
        assert len(seen) >= 3
        for before, after, sent, last in seen:
            assert before < last <= after and sent >= 1  # stored, and answered, before ready_now returned
        await c.wait_for(lambda: all(has(c.stores[i], "s2") for i in IDS))
    finally:
        await c.stop_all()


async def test_ready_now_leaves_a_ready_whose_fsync_goes_to_a_thread(clock: VirtualClock) -> None:
    # With the fsync in a worker thread the Ready belongs to the Ready loop: handled in the receiving turn, its
    # storage writes would run beside the thread's commit on the same connection.
    c = Cluster(clock)
    await c.start_all()
    try:
        lead, seen = await followers_ready_now(c, persist_in_thread=True)
        await c.stores[lead.id].update(create("s1"))
        assert seen
        for before, after, sent, _ in seen:
            assert after == before and sent == 0  # left to the Ready loop, which stored and answered it
        await c.wait_for(lambda: all(has(c.stores[i], "s1") for i in IDS))
    finally:
        await c.stop_all()


async def test_a_commit_no_append_carried_is_broadcast_after_the_delay(clock: VirtualClock) -> None:
    # The daemon's commit_broadcast_delay: the commit index of a write with none after it reaches the followers
    # in an append of its own `delay` later (not at once, when the writer's answer should go first; not only with
    # the next heartbeat).
    delay = 0.01
    c = Cluster(clock, commit_broadcast_delay=delay)
    await c.start_all()
    try:
        lead = await c.leader()
        sent: list[tuple[float, Message]] = []
        send = c.hub._send

        def spy(msgs: Sequence[Message]) -> None:
            sent.extend((clock.elapsed, m) for m in msgs)
            send(msgs)

        c.hub._send = spy  # type: ignore[method-assign]
        await c.stores[lead.id].update(create("s1"))
        committed_at, index = clock.elapsed, lead.core.commit
        await c.wait_for(lambda: all(has(c.stores[i], "s1") for i in IDS))
        alone = [(t, m) for t, m in sent if m.type == MsgType.APPEND and not m.entries and m.commit >= index]
        assert {m.dst for _, m in alone} == set(IDS) - {lead.id}
        assert all(t - committed_at > delay * 0.99 for t, _ in alone)  # (virtual time in floats)
        # a write that follows at once carries the commit itself: no append of its own for it
        sent.clear()
        await c.stores[lead.id].update(create("s2"))
        await c.stores[lead.id].update(create("s3"))
        first = lead.core.commit - 1
        assert not [m for _, m in sent if m.type == MsgType.APPEND and not m.entries and m.commit == first]
    finally:
        await c.stop_all()
