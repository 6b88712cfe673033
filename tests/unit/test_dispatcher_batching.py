"""A node's assignments are batched across commits: a burst of commits (each queued while the one before is
being committed) wakes its stream once and reaches it as one message, in commit order, removals included; an
isolated change goes out at once; a message carries at most `max_batch` events and the rest follow."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shoal.api.dispatch import COMPLETE, INCREMENTAL, Assignments
from shoal.manager.dispatcher import Dispatcher
from shoal.model.objects import ContainerSpec, Node, NodeDescription, NodeStatus, Task, TaskSpec, TaskStatus
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.clock import VirtualClock
from shoal.testing.sim import MemoryProposer
from tests.support.dispatcher import running_leader

# Far longer than a commit takes (the virtual clock only jumps when the loop is idle), shorter than the sessions
# last without heartbeats (three periods of 5 s).
WAIT = 4.0


class GatedProposer(MemoryProposer):
    """Commits an entry only once the test lets it (while `held`): the next transactions queue meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.proposing: asyncio.Queue[asyncio.Event] = asyncio.Queue()

    async def propose(self, entry: bytes) -> int:
        if self.held:
            gate = asyncio.Event()
            self.proposing.put_nowait(gate)
            await gate.wait()
        return await super().propose(entry)


def task(tid: str, node: str = "n1") -> Task:
    return Task(id=tid, spec=TaskSpec(container=ContainerSpec(image="busybox")), node_id=node,
                status=TaskStatus(state=TaskState.ASSIGNED))


def seed(tx: Tx) -> None:
    for n in ("n1", "n2"):
        tx.create(Node(id=n, status=NodeStatus(state="unknown")))
    tx.create(task("a"))


def create(*tids: str, node: str = "n1") -> Callable[[Tx], None]:
    def fn(tx: Tx) -> None:
        for tid in tids:
            tx.create(task(tid, node))
    return fn


async def test_a_burst_of_commits_reaches_the_node_as_one_message() -> None:
    proposer = GatedProposer()

    def make(store: MemoryStore, clock: VirtualClock) -> Dispatcher:
        store._proposer = proposer  # the seeded store, its later entries gated
        return Dispatcher(store, clock, batch_wait=WAIT)

    async with running_leader(seed, make, lambda d: d) as (clock, store, d):
        got: dict[str, list[tuple[float, Assignments]]] = {"n1": [], "n2": []}
        arrived = asyncio.Queue[str]()

        async def agent(node_id: str) -> None:  # takes each message as soon as it is sent
            await d.register(node_id, NodeDescription(hostname=node_id), "")
            async for m in d.assignments(node_id):
                got[node_id].append((clock.elapsed, m))
                arrived.put_nowait(node_id)

        agents = [asyncio.create_task(agent(n)) for n in got]
        await clock.run_for(1.5 * WAIT)  # the complete sets, then quiet: the next change goes out at once
        assert [(m.type, [t.id for t in m.tasks]) for _, m in got["n1"]] == [(COMPLETE, ["a"])]
        while not arrived.empty():
            arrived.get_nowait()
        rounds, at = d.wake_rounds, clock.elapsed

        # b's commit, then each next transaction queued while the one before is being committed: c, d, the
        # removal of a (which the node has), e, and c moving away to n2 (n1 must hear of it too).
        proposer.held = True
        writes = [asyncio.ensure_future(store.update(create("b")))]
        burst: list[Callable[[Tx], None]] = [
            create("c"), create("d"), lambda tx: tx.delete("task", "a"), create("e"),
            lambda tx: tx.update(task("c", "n2"), check_version=False)]
        for i, fn in enumerate(burst):
            gate = await proposer.proposing.get()
            writes.append(asyncio.ensure_future(store.update(fn)))
            proposer.held = i < len(burst) - 1  # the last one is committed without waiting
            gate.set()
            if i == 0:  # b is committed and c queued: b went out at once, in a round of its own
                assert await arrived.get() == "n1"
                assert [(when, [t.id for t in m.tasks]) for when, m in got["n1"][1:]] == [(at, ["b"])]
                assert d.wake_rounds == rounds + 1
        await asyncio.gather(*writes)

        # The rest: one more round, one message per node, in commit order.
        assert {await arrived.get(), await arrived.get()} == {"n1", "n2"}
        await clock.run_for(1.5 * WAIT)  # and nothing more comes
        assert d.wake_rounds == rounds + 2
        assert len(got["n1"]) == 3 and len(got["n2"]) == 2
        msg = got["n1"][2][1]
        assert msg.type == INCREMENTAL and [t.id for t in msg.tasks] == ["d", "e"]
        assert set(msg.removed_tasks) == {"a", "c"}
        assert [t.id for t in got["n2"][1][1].tasks] == ["c"]
        for a in agents:
            a.cancel()
        await asyncio.gather(*agents, return_exceptions=True)


async def test_a_message_carries_at_most_max_batch_events() -> None:
    async with running_leader(seed, lambda s, c: Dispatcher(s, c, max_batch=2), lambda d: d) as (_, store, d):
        await d.register("n1", NodeDescription(hostname="n1"), "")
        stream = d.assignments("n1")
        assert [t.id for t in (await stream.__anext__()).tasks] == ["a"]
        await store.update(create("b", "c", "d", "e", "f"))
        got = [[t.id for t in (await asyncio.wait_for(stream.__anext__(), 5)).tasks] for _ in range(3)]
        assert got == [["b", "c"], ["d", "e"], ["f"]]
        await stream.aclose()
