"""The manager's log broker (swarmkit's manager/logbroker, minimal): logs of tasks on any node.

A reader (`docker service logs`, `GET /tasks/{id}/logs`) asks `LogBroker.logs(tasks, options)` and gets
`(task, line)` pairs from every node, merged in arrival order, until every task's stream ended (or for as
long as the reader follows). Per node:

- this manager's own node: its in-process agent's `task_logs`, one stream per task;
- another node: one *subscription* (its tasks + the options) is sent on the node's subscription stream
  (`listen`, served as `Logs.ListenSubscriptions`, opened by the node once per session). The node answers with
  one publish stream for that subscription (`publish`, served as `Logs.PublishLogs`): first a message naming
  the subscription (the node answered), then lines and per-task end markers (done / no logs here / error).
  Only the node the subscription went to may publish it, and only for the subscription's tasks.

A node that cannot answer gives a warning line per task, never a hang: no subscription stream (no session,
down, never connected), no answer within `answer_timeout`, or a publish stream that ends before its tasks
did (the node died). When the reader goes away (its iteration is closed or cancelled), the subscription is
closed: a close message goes to the node, and the publish stream is ended from this side too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoal.api.logs import LogLine, LogOptions
from shoal.clock import Clock
from shoal.errors import NotFound, ShoalError
from shoal.ids import new_id
from shoal.model.objects import Task
from shoal.store.memory import MemoryStore
from shoal.tasks import cancel_all

log = logging.getLogger(__name__)


class LocalLogs(Protocol):
    def task_logs(self, task_id: str, options: LogOptions) -> AsyncIterator[LogLine]: ...


@dataclass(frozen=True)
class Subscription:
    """What a node is asked (or told to stop: `close`)."""

    id: str
    task_ids: tuple[str, ...] = ()
    options: LogOptions = field(default_factory=LogOptions)
    close: bool = False


@dataclass
class Published:
    """One message of a node's publish stream."""

    subscription_id: str
    entries: list[tuple[str, LogLine]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def task_ids(self) -> set[str]:
        return {tid for tid, _ in self.entries} | set(self.done) | set(self.not_found) | set(self.errors)


class _Listener:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.queue: asyncio.Queue[Subscription] = asyncio.Queue()
        self.gone = asyncio.Event()


class _Sub:
    def __init__(self, sub_id: str, node_id: str, task_ids: set[str]) -> None:
        self.id = sub_id
        self.node_id = node_id
        self.task_ids = task_ids
        self.queue: asyncio.Queue[Published] = asyncio.Queue(maxsize=64)  # back-pressure up to the node
        self.opened = asyncio.Event()
        self.ended = asyncio.Event()  # the publish stream ended
        self.closed = asyncio.Event()  # the reader is gone
        self.publishing = False


def warning_line(t: Task, now: float) -> LogLine:
    return LogLine(stream="stderr", timestamp=now, data=(
        f"warning: incomplete log stream: node {t.node_id or '(unassigned)'} of task {t.id} is not available\n"
    ).encode())


def error_line(t: Task, now: float, err: str) -> LogLine:
    return LogLine(stream="stderr", timestamp=now, data=f"error from task {t.id}: {err}\n".encode())


async def _first(*aws: Any) -> None:
    """Wait until one of the awaitables is done; cancel the others."""
    futs = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in futs:
            f.cancel()


_END = object()


class LogBroker:
    def __init__(self, store: MemoryStore, clock: Clock, answer_timeout: float = 5.0) -> None:
        self.store = store
        self.clock = clock
        self.answer_timeout = answer_timeout
        self._listeners: dict[str, _Listener] = {}
        self._subs: dict[str, _Sub] = {}
        self._rng = random.Random()  # subscription IDs only name a stream; no need to replay them

    # --- the node side (served over gRPC by shoal/rpc/logs.py) ---------------------------------------

    async def listen(self, node_id: str, until: asyncio.Event | None = None) -> AsyncIterator[Subscription]:
        """The subscriptions for `node_id`, until the caller goes away or `until` is set (its session
        ended). A newer stream of the same node replaces this one."""
        lst = _Listener(node_id)
        old = self._listeners.get(node_id)
        if old is not None:
            old.gone.set()
        self._listeners[node_id] = lst
        try:
            while not lst.gone.is_set() and not (until is not None and until.is_set()):
                get = asyncio.ensure_future(lst.queue.get())
                waits: list[Any] = [get, lst.gone.wait()]
                if until is not None:
                    waits.append(until.wait())
                await _first(*waits)
                if get.done() and not get.cancelled():
                    yield get.result()
        finally:
            lst.gone.set()
            if self._listeners.get(node_id) is lst:
                del self._listeners[node_id]

    async def publish(self, node_id: str, messages: AsyncIterator[Published]) -> None:
        """One node's publish stream of one subscription; returns when it ends or the reader is gone."""
        it = messages.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        sub = self._subs.get(first.subscription_id)
        if sub is None:
            return  # closed already: nothing to do
        if sub.node_id != node_id or sub.publishing:
            raise ShoalError("rpc error: code = PermissionDenied desc = "
                             f"log subscription {first.subscription_id} is not for node {node_id}")
        sub.publishing = True
        sub.opened.set()

        async def pump() -> None:
            msg: Published | None = first
            while msg is not None:
                stray = msg.task_ids() - sub.task_ids
                if stray:
                    raise ShoalError("rpc error: code = PermissionDenied desc = "
                                     f"task {sorted(stray)[0]} is not part of log subscription {sub.id}")
                if msg.entries or msg.done or msg.not_found or msg.errors:
                    await sub.queue.put(msg)
                try:
                    msg = await it.__anext__()
                except StopAsyncIteration:
                    msg = None

        p = asyncio.ensure_future(pump())
        try:
            await _first(p, sub.closed.wait())
            if p.done() and not p.cancelled() and p.exception() is not None:
                raise p.exception()  # type: ignore[misc]
        finally:
            p.cancel()
            sub.ended.set()

    # --- the reader side -------------------------------------------------------------------------------

    async def logs(self, tasks: Sequence[Task], options: LogOptions, local_node_id: str = "",
                   local: LocalLogs | None = None) -> AsyncIterator[tuple[Task, LogLine]]:
        """Lines of `tasks` from their nodes until every stream ended; warning lines for nodes that cannot
        answer. Closing or cancelling the iteration closes the subscriptions."""
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=1024)
        by_node: dict[str, list[Task]] = {}
        for t in tasks:
            by_node.setdefault(t.node_id, []).append(t)
        producers: list[asyncio.Task[None]] = []
        for node_id, ts in by_node.items():
            if local is not None and node_id == local_node_id:
                producers += [asyncio.create_task(self._local(t, options, local, out)) for t in ts]
            else:
                producers.append(asyncio.create_task(self._remote(node_id, ts, options, out)))
        try:
            running = len(producers)
            while running:
                item = await out.get()
                if item is _END:
                    running -= 1
                    continue
                yield item
        finally:
            await cancel_all(producers)

    async def _local(self, t: Task, opts: LogOptions, local: LocalLogs, out: asyncio.Queue[Any]) -> None:
        try:
            async for line in local.task_logs(t.id, opts):
                await out.put((t, line))
        except NotFound:
            pass
        except Exception as e:
            await out.put((t, error_line(t, self.clock.now(), str(e))))
        await out.put(_END)  # not when cancelled: the reader is gone then

    def _node_can_answer(self, node_id: str) -> _Listener | None:
        if not node_id:
            return None
        node = self.store.view().node(node_id)
        if node is None or node.status.state == "down":
            return None
        return self._listeners.get(node_id)

    async def _remote(self, node_id: str, ts: list[Task], opts: LogOptions, out: asyncio.Queue[Any]) -> None:
        pending = {t.id: t for t in ts}
        sub: _Sub | None = None
        lst = self._node_can_answer(node_id)
        try:
            if lst is None:
                return
            sub = _Sub(new_id(self._rng), node_id, set(pending))
            self._subs[sub.id] = sub
            lst.queue.put_nowait(Subscription(sub.id, tuple(pending), opts))
            timer = asyncio.ensure_future(self.clock.sleep(self.answer_timeout))
            try:
                await _first(sub.opened.wait(), lst.gone.wait(), timer)
            finally:
                timer.cancel()
            if not sub.opened.is_set():
                log.info("node %s did not answer log subscription %s", node_id, sub.id)
                return
            while pending:
                if sub.queue.empty() and (sub.ended.is_set() or lst.gone.is_set()):
                    return
                get = asyncio.ensure_future(sub.queue.get())
                await _first(get, sub.ended.wait(), lst.gone.wait())
                if not get.done() or get.cancelled():
                    continue
                msg = get.result()
                for tid, line in msg.entries:
                    if tid in pending:
                        await out.put((pending[tid], line))
                for tid in msg.done + msg.not_found:
                    pending.pop(tid, None)
                for tid, err in msg.errors.items():
                    t = pending.pop(tid, None)
                    if t is not None:
                        await out.put((t, error_line(t, self.clock.now(), err)))
        finally:
            # Tasks whose stream did not end: a warning line each (the reader is still there unless we
            # were cancelled, in which case nothing more is written).
            if sub is not None:
                sub.closed.set()
                self._subs.pop(sub.id, None)
                if lst is not None and not lst.gone.is_set() and (pending or not sub.ended.is_set()):
                    lst.queue.put_nowait(Subscription(sub.id, close=True))
            me = asyncio.current_task()
            if me is None or not me.cancelling():
                for t in pending.values():
                    await out.put((t, warning_line(t, self.clock.now())))
                await out.put(_END)


__all__ = ["LocalLogs", "LogBroker", "Published", "Subscription", "error_line", "warning_line"]
