"""The manager's log broker without gRPC: subscriptions to nodes, publishing, bounded waits, closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shoal.api.logs import LogLine, LogOptions
from shoal.clock import SystemClock
from shoal.errors import NotFound, ShoalError
from shoal.manager.dispatcher import node_for_local
from shoal.manager.logbroker import LogBroker, Published, Subscription
from shoal.model.objects import Task
from shoal.store.memory import Tx
from shoal.testing.sim import memory_store

W1, W2, MGR = "node-w1", "node-w2", "node-mgr"


def line(text: str, stream: str = "stdout") -> LogLine:
    return LogLine(stream=stream, timestamp=1.0, data=text.encode())


async def rig(timeout: float = 0.3) -> LogBroker:
    store = memory_store(SystemClock())

    def fn(tx: Tx) -> None:
        for n in (W1, W2, MGR):
            tx.create(node_for_local(n, n, "worker", "127.0.0.1"))

    await store.update(fn)
    return LogBroker(store, SystemClock(), answer_timeout=timeout)


class Listening:
    """A node's subscription stream, read in the background."""

    def __init__(self, broker: LogBroker, node_id: str) -> None:
        self.got: asyncio.Queue[Subscription] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(broker, node_id))

    async def _run(self, broker: LogBroker, node_id: str) -> None:
        async for s in broker.listen(node_id):
            await self.got.put(s)

    async def next(self) -> Subscription:
        return await asyncio.wait_for(self.got.get(), 5)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def feed(*msgs: Published, hold: asyncio.Event | None = None) -> AsyncIterator[Published]:
    for m in msgs:
        yield m
    if hold is not None:
        await hold.wait()


async def collect(it: AsyncIterator[tuple[Task, LogLine]]) -> list[tuple[str, str]]:
    return [(t.id, ln.data.decode()) async for t, ln in it]


class LocalAgent:
    async def task_logs(self, task_id: str, options: LogOptions) -> AsyncIterator[LogLine]:
        if task_id == "gone":
            raise NotFound("no such task")
        yield line(f"local {task_id} tail={options.tail}\n")


async def test_remote_and_local_lines_until_every_task_ended() -> None:
    b = await rig()
    lst = Listening(b, W1)
    await asyncio.sleep(0)
    tasks = [Task(id="t1", node_id=W1), Task(id="t2", node_id=W1), Task(id="m1", node_id=MGR),
             Task(id="gone", node_id=MGR)]
    reader = asyncio.create_task(collect(b.logs(tasks, LogOptions(tail=1), MGR, LocalAgent())))
    sub = await lst.next()
    assert set(sub.task_ids) == {"t1", "t2"} and sub.options.tail == 1 and not sub.close
    await b.publish(W1, feed(Published(sub.id), Published(sub.id, entries=[("t1", line("a\n")), ("t2", line("b\n"))]),
                             Published(sub.id, done=["t1"], not_found=["t2"])))
    got = await asyncio.wait_for(reader, 5)
    assert sorted(got) == [("m1", "local m1 tail=1\n"), ("t1", "a\n"), ("t2", "b\n")]
    await lst.stop()


async def test_node_without_subscription_stream_or_silent_gives_warning_promptly() -> None:
    b = await rig(timeout=0.3)
    got = await asyncio.wait_for(collect(b.logs([Task(id="t1", node_id=W1), Task(id="u")], LogOptions())), 2)
    assert sorted(got) == [("t1", f"warning: incomplete log stream: node {W1} of task t1 is not available\n"),
                           ("u", "warning: incomplete log stream: node (unassigned) of task u is not available\n")]
    lst = Listening(b, W2)  # listens but never answers: bounded wait
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await asyncio.wait_for(collect(b.logs([Task(id="t2", node_id=W2)], LogOptions(follow=True))), 3)
    assert got == [("t2", f"warning: incomplete log stream: node {W2} of task t2 is not available\n")]
    assert 0.25 < loop.time() - t0 < 2
    sub = await lst.next()
    assert not sub.close and sub.task_ids == ("t2",)
    close = await lst.next()  # the node is told to drop the subscription it did not answer
    assert close.close and close.id == sub.id
    await lst.stop()


async def test_publish_stream_ending_early_warns_for_the_unfinished_tasks() -> None:
    b = await rig()
    lst = Listening(b, W1)
    await asyncio.sleep(0)
    reader = asyncio.create_task(collect(b.logs([Task(id="t1", node_id=W1), Task(id="t2", node_id=W1)],
                                                LogOptions(follow=True))))
    sub = await lst.next()
    await b.publish(W1, feed(Published(sub.id, entries=[("t1", line("x\n"))]), Published(sub.id, done=["t1"])))
    got = await asyncio.wait_for(reader, 5)
    assert got == [("t1", "x\n"), ("t2", f"warning: incomplete log stream: node {W1} of task t2 is not available\n")]
    await lst.stop()


async def test_reader_gone_closes_the_subscription_and_the_publish_stream() -> None:
    b = await rig()
    lst = Listening(b, W1)
    await asyncio.sleep(0)
    it = b.logs([Task(id="t1", node_id=W1)], LogOptions(follow=True))
    first = asyncio.ensure_future(it.__anext__())
    sub = await lst.next()
    hold = asyncio.Event()  # the node would publish forever
    pub = asyncio.create_task(b.publish(W1, feed(Published(sub.id, entries=[("t1", line("1\n"))]), hold=hold)))
    t, ln = await asyncio.wait_for(first, 5)
    assert (t.id, ln.data) == ("t1", b"1\n")
    await it.aclose()  # type: ignore[attr-defined]
    close = await lst.next()
    assert close.id == sub.id and close.close
    await asyncio.wait_for(pub, 5)  # the publish call ends from the manager's side too
    assert not b._subs
    await lst.stop()
    assert not b._listeners


async def test_only_the_subscribed_node_and_its_tasks_may_publish() -> None:
    b = await rig()
    lst = Listening(b, W1)
    await asyncio.sleep(0)
    reader = asyncio.create_task(collect(b.logs([Task(id="t1", node_id=W1)], LogOptions())))
    sub = await lst.next()
    with pytest.raises(ShoalError, match=r"PermissionDenied.*not for node"):
        await b.publish(W2, feed(Published(sub.id)))
    with pytest.raises(ShoalError, match=r"PermissionDenied.*task t9 is not part"):
        await b.publish(W1, feed(Published(sub.id), Published(sub.id, entries=[("t9", line("forged\n"))])))
    got = await asyncio.wait_for(reader, 5)
    assert got == [("t1", f"warning: incomplete log stream: node {W1} of task t1 is not available\n")]
    await lst.stop()
