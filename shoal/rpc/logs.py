"""Logs over node RPC: the manager's `Logs` service (in front of `LogBroker`) and the node side that serves
log subscriptions from its agent. Design: docs/design/cluster.md, "Logs".

Node side: once its session is up, the node keeps `ListenSubscriptions` open. For each subscription it
opens one `PublishLogs` client stream: a first message naming the subscription, then the lines of the
subscription's tasks (read from `Agent.task_logs`, several coalesced per message when they come fast) and a
per-task end marker. A close message, the end of the publish call (the manager ended it) or the end of the
subscription stream stops the subscription's readers: nothing outlives them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from shoal import ca as CA
from shoal.api.logs import LogLine, LogOptions
from shoal.errors import NotFound, ShoalError
from shoal.manager.logbroker import LocalLogs, LogBroker, Published
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg
from shoal.rpc.client import channel_may_close
from shoal.rpc.server import ANY_NODE, Authorizer, authorized
from shoal.tasks import cancel_all

log = logging.getLogger(__name__)

MAX_BATCH = 256  # lines per publish message


def options_to_json(o: LogOptions) -> bytes:
    return json.dumps(dataclasses.asdict(o)).encode()


def options_from_json(raw: bytes) -> LogOptions:
    d = json.loads(raw or b"{}")
    names = {f.name for f in dataclasses.fields(LogOptions)}
    return LogOptions(**{k: v for k, v in d.items() if k in names})


def _from_pb(m: pb.PublishLogsMessage) -> Published:
    return Published(subscription_id=m.subscription_id,
                     entries=[(e.task_id, LogLine(stream=e.stream or "stdout", timestamp=e.timestamp, data=e.data))
                              for e in m.entries],
                     done=list(m.done), not_found=list(m.not_found), errors=dict(m.errors))


class LogsServicer(pbg.LogsServicer):
    def __init__(self, auth: Authorizer, broker: LogBroker, dispatcher: Any) -> None:
        self.auth = auth
        self.broker = broker
        self.dispatcher = dispatcher

    @authorized(ANY_NODE)
    async def ListenSubscriptions(self, request: pb.Empty, context: grpc.aio.ServicerContext,
                                  ident: CA.NodeIdentity) -> AsyncIterator[pb.LogSubscription]:
        session = getattr(self.dispatcher, "sessions", {}).get(ident.node_id)
        if session is None:
            raise ShoalError("rpc error: code = FailedPrecondition desc = node is not registered")
        async for s in self.broker.listen(ident.node_id, until=session.expired):
            yield pb.LogSubscription(id=s.id, task_ids=list(s.task_ids), options=options_to_json(s.options),
                                     close=s.close)

    @authorized(ANY_NODE)
    async def PublishLogs(self, request_iterator: AsyncIterator[pb.PublishLogsMessage],
                          context: grpc.aio.ServicerContext, ident: CA.NodeIdentity) -> pb.Empty:
        async def messages() -> AsyncIterator[Published]:
            async for m in request_iterator:
                yield _from_pb(m)

        await self.broker.publish(ident.node_id, messages())
        return pb.Empty()


# --- node side -----------------------------------------------------------------------------------------


async def publish_subscription(stub: pbg.LogsStub, agent: LocalLogs, sub: pb.LogSubscription) -> None:
    """Serve one subscription: read each task's logs from the agent and publish them until all ended."""
    opts = options_from_json(sub.options)
    out: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue(maxsize=1024)

    async def read(tid: str) -> None:
        try:
            async for line in agent.task_logs(tid, opts):
                await out.put(("line", tid, line))
            await out.put(("done", tid, None))
        except NotFound:
            await out.put(("not_found", tid, None))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await out.put(("error", tid, str(e)))

    async def messages() -> AsyncIterator[pb.PublishLogsMessage]:
        yield pb.PublishLogsMessage(subscription_id=sub.id)  # "this node answers"
        remaining = len(set(sub.task_ids))
        while remaining:
            m = pb.PublishLogsMessage(subscription_id=sub.id)
            item = await out.get()
            while True:
                kind, tid, val = item
                if kind == "line":
                    m.entries.append(pb.LogEntry(task_id=tid, stream=val.stream, timestamp=val.timestamp,
                                                 data=val.data))
                else:
                    remaining -= 1
                    if kind == "done":
                        m.done.append(tid)
                    elif kind == "not_found":
                        m.not_found.append(tid)
                    else:
                        m.errors[tid] = val
                if len(m.entries) >= MAX_BATCH or out.empty():
                    break
                item = out.get_nowait()
            yield m

    readers = [asyncio.create_task(read(tid)) for tid in dict.fromkeys(sub.task_ids)]
    try:
        await stub.PublishLogs(messages())
    finally:
        await cancel_all(readers)


async def serve_subscriptions(channel: grpc.aio.Channel, agent: LocalLogs) -> None:
    """One `ListenSubscriptions` stream: publish each subscription until it is closed; returns (or raises)
    when the stream ends, after stopping every publisher it started."""
    stub = pbg.LogsStub(channel)
    pubs: dict[str, asyncio.Task[None]] = {}

    def started(sub: pb.LogSubscription) -> None:
        t = asyncio.create_task(publish_subscription(stub, agent, sub), name=f"logs-{sub.id}")
        pubs[sub.id] = t

        def finished(task: asyncio.Task[None]) -> None:
            if pubs.get(sub.id) is task:
                del pubs[sub.id]
            if not task.cancelled() and task.exception() is not None:
                log.debug("publishing log subscription %s ended: %s", sub.id, task.exception())

        t.add_done_callback(finished)

    call = stub.ListenSubscriptions(pb.Empty())
    try:
        async for sub in call:
            if sub.close:
                t = pubs.pop(sub.id, None)
                if t is not None:
                    t.cancel()
            elif sub.id not in pubs:
                started(sub)
    finally:
        call.cancel()
        tasks = list(pubs.values())
        await cancel_all(tasks)


async def serve_logs_loop(remote: Any, agent: Any, clock: Any) -> None:
    """A worker's log service: while its agent has a session, listen for subscriptions on the session's
    channel (`remote` is the RemoteDispatcher); after any end, again once the session is (back) up."""
    backoff = 0.2
    while True:
        await agent.connected.wait()
        try:
            channel = remote._stub_channel()
            with channel_may_close():  # a new session closes this channel
                await serve_subscriptions(channel, agent)
            backoff = 0.2
        except asyncio.CancelledError:
            raise
        except (grpc.aio.AioRpcError, ShoalError, grpc.aio.UsageError) as e:
            log.debug("log subscription stream ended: %s", e)
        except Exception:
            log.exception("log subscription stream failed")
        await clock.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


__all__ = ["LogsServicer", "options_from_json", "options_to_json", "publish_subscription", "serve_logs_loop",
           "serve_subscriptions"]
