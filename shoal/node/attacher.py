"""Asking the leader for a plain container's network attachment (shoal.manager.attachments), from any node.

On the leader itself the store is at hand; every other node (a worker, a manager that follows) calls the
Network service on the channel its agent's session already has with a manager. A manager that is not the
leader (or no session yet, or leadership moving) answers UNAVAILABLE: the call is tried again until the
deadline, as dockerd's attacher waits for the swarm.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import grpc

from shoal.api.attachments import allocated
from shoal.errors import ShoalError, Unavailable
from shoal.ids import new_id
from shoal.manager import attachments
from shoal.manager.raft.node import NotLeaderError
from shoal.model import codec
from shoal.model.objects import Task
from shoal.rpc.client import from_rpc_error
from shoal.rpc.netfeed import remote_attach, remote_detach

RETRY = 0.2
CALL_TIMEOUT = attachments.ATTACH_TIMEOUT + 10.0


class Attacher:
    def __init__(self, node: Any, rng: random.Random | None = None,
                 timeout: float = attachments.ATTACH_TIMEOUT) -> None:
        self.node = node  # shoal.node.ShoalNode
        self.rng = rng or random.Random()
        self.timeout = timeout

    def _channel(self) -> grpc.aio.Channel | None:
        node = self.node
        remote = node.remote
        if remote is None:
            d = getattr(node, "agent_dispatcher", None)
            remote = d.remote if d is not None else None
        ch: grpc.aio.Channel | None = getattr(remote, "_channel", None) if remote is not None else None
        return ch

    async def _ask(self, local: Any, method: str, body: dict[str, Any]) -> bytes:
        """`local(store)` on the leader, else the Network service's `method` with `body`; retried while no
        leader answers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last = "no manager to ask"
        while True:
            node = self.node
            if node.store is not None and node.is_leader:
                try:
                    out: bytes = await local(node.store)
                    return out
                except NotLeaderError as e:
                    last = e.message
            else:
                ch = self._channel()
                if ch is not None:
                    try:
                        if method == "Attach":
                            return await remote_attach(ch, body, CALL_TIMEOUT)
                        await remote_detach(ch, body, CALL_TIMEOUT)
                        return b""
                    except grpc.aio.AioRpcError as e:
                        if e.code() != grpc.StatusCode.UNAVAILABLE:
                            raise from_rpc_error(e) from None
                        last = e.details() or e.code().name
            if loop.time() >= deadline:
                raise Unavailable(f"no swarm leader answered a network attachment request: {last}")
            await asyncio.sleep(RETRY)

    async def attach(self, container: str, network: str, *, name: str = "", aliases: tuple[str, ...] = ()) -> Task:
        """The allocated attachment of this node's `container` (a key) to `network` (ID or name)."""

        async def local(store: Any) -> bytes:
            t = await attachments.attach(store, self.node.node_id, container, network, task_id=new_id(self.rng),
                                         name=name, aliases=aliases)
            return json.dumps(codec.encode(t)).encode()

        raw = await self._ask(local, "Attach", {"container": container, "network": network, "name": name,
                                                "aliases": list(aliases)})
        t = codec.decode_as(Task, json.loads(raw))
        if not allocated(t):
            raise ShoalError(f"network attachment {t.id} came back without an address")
        return t

    async def detach(self, attachment_id: str) -> None:
        async def local(store: Any) -> bytes:
            await attachments.detach(store, self.node.node_id, attachment_id)
            return b""

        await self._ask(local, "Detach", {"attachment_id": attachment_id})
