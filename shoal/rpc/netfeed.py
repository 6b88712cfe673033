"""The `Network` service: cluster state for a worker's network agent, from the serving manager's own store.

Read-only, so every manager (leader or not) answers from its local replica. The node side (`RemoteFeed`)
follows the session of its `RemoteDispatcher`: it opens the stream on the session's channel and opens it again
after a new session (a reconnect, another manager).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from shoal import ca as CA
from shoal.clock import Clock
from shoal.net.state import NetState, StoreChanges, decode_state, encode_state
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg
from shoal.rpc.server import ANY_NODE, Authorizer, authorized
from shoal.store.memory import MemoryStore

log = logging.getLogger(__name__)


class NetworkServicer(pbg.NetworkServicer):
    def __init__(self, auth: Authorizer, store: MemoryStore) -> None:
        self.auth = auth
        self.store = store

    @authorized(ANY_NODE)
    async def WatchState(self, request: pb.Empty, context: grpc.aio.ServicerContext,
                         ident: CA.NodeIdentity) -> AsyncIterator[pb.Blob]:
        async for s in StoreChanges(self.store).states():
            yield pb.Blob(data=json.dumps(encode_state(s), separators=(",", ":")).encode())


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
                async for msg in call:
                    backoff = 0.2
                    yield decode_state(json.loads(msg.data))
            except grpc.aio.AioRpcError as e:
                log.info("network state stream ended (%s); reopening", e.code().name)
            finally:
                call.cancel()
            await self.clock.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
