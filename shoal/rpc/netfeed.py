"""The `Network` service: cluster state for a worker's network agent, from the serving manager's own store,
and network attachments of a node's plain containers.

WatchState is read-only, so every manager (leader or not) answers from its local replica. The node side
(`RemoteFeed`) follows the session of its `RemoteDispatcher`: it opens the stream on the session's channel and
opens it again after a new session (a reconnect, another manager).

Attach/Detach write (shoal.manager.attachments): a manager that is not the leader answers UNAVAILABLE and the
node asks again (its session moves to the leader). A node only ever attaches and detaches for itself: the node
ID is the caller's certificate's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from shoal import ca as CA
from shoal.clock import Clock
from shoal.errors import Unavailable
from shoal.ids import new_id
from shoal.manager import attachments
from shoal.model import codec
from shoal.net.state import NetState, StoreChanges, decode_state, encode_state
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg
from shoal.rpc.client import channel_may_close
from shoal.rpc.server import ANY_NODE, Authorizer, authorized
from shoal.store.memory import MemoryStore

log = logging.getLogger(__name__)


class NetworkServicer(pbg.NetworkServicer):
    def __init__(self, auth: Authorizer, store: MemoryStore, rng: random.Random | None = None) -> None:
        self.auth = auth
        self.store = store
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))

    @authorized(ANY_NODE)
    async def WatchState(self, request: pb.Empty, context: grpc.aio.ServicerContext,
                         ident: CA.NodeIdentity) -> AsyncIterator[pb.Blob]:
        async for s in StoreChanges(self.store).states():
            yield pb.Blob(data=json.dumps(encode_state(s), separators=(",", ":")).encode())

    @authorized(ANY_NODE)
    async def Attach(self, request: pb.Blob, context: grpc.aio.ServicerContext, ident: CA.NodeIdentity) -> pb.Blob:
        body = json.loads(request.data)
        t = await attachments.attach(self.store, ident.node_id, str(body["container"]), str(body["network"]),
                                     task_id=new_id(self.rng), name=str(body.get("name") or ""),
                                     aliases=tuple(str(a) for a in body.get("aliases") or ()))
        return pb.Blob(data=json.dumps(codec.encode(t), separators=(",", ":")).encode())

    @authorized(ANY_NODE)
    async def Detach(self, request: pb.Blob, context: grpc.aio.ServicerContext, ident: CA.NodeIdentity) -> pb.Empty:
        await attachments.detach(self.store, ident.node_id, str(json.loads(request.data)["attachment_id"]))
        return pb.Empty()


class RemoteFeed:
    """`NetFeed` over the Network service, on the channel of `remote` (a RemoteDispatcher) once connected."""

    def __init__(self, remote: Any, connected: Callable[[], asyncio.Event | None], clock: Clock) -> None:
        self.remote = remote
        self.connected = connected
        self.clock = clock

    async def states(self) -> AsyncIterator[NetState]:
        backoff = 0.2
        while True:
            ev = self.connected()
            if ev is None:
                await self.clock.sleep(backoff)
                continue
            await ev.wait()
            channel = getattr(self.remote, "_channel", None)
            if channel is None:
                await self.clock.sleep(backoff)
                continue
            call = pbg.NetworkStub(channel).WatchState(pb.Empty())
            try:
                with channel_may_close():  # a new session closes this channel
                    async for msg in call:
                        backoff = 0.2
                        yield decode_state(json.loads(msg.data))
            except grpc.aio.AioRpcError as e:
                log.info("network state stream ended (%s); reopening", e.code().name)
            except Unavailable as e:
                log.info("network state stream ended (%s); reopening", e)
            finally:
                call.cancel()
            await self.clock.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


async def remote_attach(channel: grpc.aio.Channel, body: dict[str, Any], timeout: float) -> bytes:
    """Network.Attach on `channel` (shoal.node.attacher): the attachment task, codec JSON."""
    with channel_may_close():
        resp = await pbg.NetworkStub(channel).Attach(pb.Blob(data=json.dumps(body).encode()), timeout=timeout)
    return bytes(resp.data)


async def remote_detach(channel: grpc.aio.Channel, body: dict[str, Any], timeout: float) -> None:
    with channel_may_close():
        await pbg.NetworkStub(channel).Detach(pb.Blob(data=json.dumps(body).encode()), timeout=timeout)
