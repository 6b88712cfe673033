"""A follower's writes to the leader on one long-lived stream (the Raft service's `ForwardMux`).

A call per forwarded request made the leader's gRPC server the bottleneck of writes sent to a follower: its
asyncio server accepts new calls one at a time, so at a few hundred calls a second a forwarded write waited
100 ms and more before the leader even looked at it, while the leader committed its own clients' writes in
about 10 ms. Here each leader gets one bidirectional stream; requests go out as they come (those queued while a
message is being written go together in the next one), each tagged with an ID, and the leader sends each
answer whole, tagged the same way.

Only requests with a whole, bounded answer use it (the Engine API's writes); reads, which may stream without
end (`logs --follow`, events), keep a call of their own (`shoal.rpc.raft.forward`). A leader that does not
know `ForwardMux` answers UNIMPLEMENTED and is sent calls of their own from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import grpc

from shoal.errors import NotLeader, ShoalError, Unavailable
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg
from shoal.rpc.client import status_error
from shoal.rpc.raft import MUX_BATCH_BYTES, LeaderChannels

log = logging.getLogger(__name__)


class MuxUnsupported(ShoalError):
    """The leader does not serve `ForwardMux` (an older manager): send this request a call of its own."""


def item_error(item: pb.ForwardMuxItem) -> ShoalError:
    """The error a leader reported for one request, as the same failure of a call of its own would raise."""
    code = grpc.StatusCode[item.error_code] if item.error_code in grpc.StatusCode.__members__ \
        else grpc.StatusCode.UNKNOWN
    hint = item.error_metadata.get("shoal-leader-addr", "")
    if code == grpc.StatusCode.FAILED_PRECONDITION and hint:
        return NotLeader(item.error_details or "not the leader", hint)
    return status_error(code, item.error_details)


class _Stream:
    """One open `ForwardMux` stream to one leader, with the requests waiting for their answers."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = pbg.RaftStub(channel).ForwardMux()
        self.pending: dict[int, asyncio.Future[pb.ForwardChunk]] = {}
        self.outbox: list[pb.ForwardMuxItem] = []
        self.wake = asyncio.Event()
        self.failed: ShoalError | None = None
        self.code: grpc.StatusCode | None = None
        self.ids = itertools.count(1)
        self.tasks = (asyncio.create_task(self._send()), asyncio.create_task(self._receive()))

    async def request(self, req: pb.ForwardRequest) -> pb.ForwardChunk:
        if self.failed is not None:
            raise self.failed
        item_id = next(self.ids)
        fut: asyncio.Future[pb.ForwardChunk] = asyncio.get_running_loop().create_future()
        self.pending[item_id] = fut
        self.outbox.append(pb.ForwardMuxItem(id=item_id, request=req))
        self.wake.set()
        try:
            return await fut
        finally:
            self.pending.pop(item_id, None)

    async def _send(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                items, self.outbox = self.outbox, []
                while items:
                    batch: list[pb.ForwardMuxItem] = []
                    size = 0
                    while items and (not batch or size + items[0].ByteSize() <= MUX_BATCH_BYTES):
                        size += items[0].ByteSize()
                        batch.append(items.pop(0))
                    await self.call.write(pb.ForwardMuxBatch(items=batch))
        except Exception as e:  # the stream is unusable; its requests must fail, not hang
            self._fail(e)

    async def _receive(self) -> None:
        try:
            async for batch in self.call:
                for item in batch.items:
                    fut = self.pending.get(item.id)
                    if fut is None or fut.done():
                        continue  # its client went away
                    if item.error_code:
                        fut.set_exception(item_error(item))
                    else:
                        fut.set_result(item.answer)
            self._fail(Unavailable("rpc error: code = Unavailable desc = the leader closed the forwarding stream"))
        except Exception as e:
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if self.failed is not None:
            return
        if isinstance(e, grpc.aio.AioRpcError):
            self.code = e.code()
            err: ShoalError = MuxUnsupported(e.details() or "") if self.code == grpc.StatusCode.UNIMPLEMENTED \
                else status_error(self.code, e.details() or "")
        elif isinstance(e, ShoalError):
            err = e
        else:
            err = Unavailable(f"rpc error: code = Unavailable desc = forwarding stream failed: {e}")
        self.failed = err
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(err)
        self.wake.set()

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.call.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


class ForwardMux:
    """The follower's side: a stream per leader address, opened on first use and again after it fails."""

    def __init__(self, channels: LeaderChannels) -> None:
        self.channels = channels
        self._streams: dict[str, _Stream] = {}
        self.unsupported: set[str] = set()

    async def request(self, leader_addr: str, req: pb.ForwardRequest) -> pb.ForwardChunk:
        """Request `req`'s whole answer from the leader; raises MuxUnsupported when the leader has no
        `ForwardMux` (the caller then sends it a call of its own) and what a call of its own would raise
        otherwise."""
        if leader_addr in self.unsupported:
            raise MuxUnsupported("the leader does not serve ForwardMux")
        stream = self._streams.get(leader_addr)
        if stream is None or stream.failed is not None:
            if stream is not None:
                await stream.close()
            stream = self._streams[leader_addr] = _Stream(await self.channels.get(leader_addr))
        try:
            return await stream.request(req)
        except MuxUnsupported:
            self.unsupported.add(leader_addr)
            raise
        except ShoalError:
            if stream.failed is not None and self._streams.get(leader_addr) is stream:
                del self._streams[leader_addr]  # the next request opens a new stream
                if stream.code == grpc.StatusCode.UNAVAILABLE:
                    await self.channels.drop(leader_addr)
                await stream.close()
            raise

    async def close(self) -> None:
        streams, self._streams = list(self._streams.values()), {}
        for s in streams:
            await s.close()
