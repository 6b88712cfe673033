"""How Raft messages travel between managers: the `Transport` seam and an in-memory hub for tests.

A transport is fire-and-forget (the core tolerates loss, duplication and reordering): `send` must not block
or raise; whatever it cannot deliver it drops, and it may say so through `RaftNode.report_unreachable` /
`report_snapshot`. Received messages are handed to the callback registered with `set_receiver`
(`RaftNode.step`), on the event loop.

The gRPC transport (shoal.rpc.raft.GrpcTransport) implements the same protocol on the mutual-TLS node
listener, served to managers only, with one sending stream per peer so a slow peer never delays the others.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from shoal.clock import Clock
from shoal.manager.raft.core import Message

Receiver = Callable[[Message], None]


class Transport(Protocol):
    def send(self, messages: Sequence[Message]) -> None:
        """Queue messages for delivery to their `dst`; never blocks, never raises."""

    def set_receiver(self, receive: Receiver | None) -> None:
        """Where incoming messages go (None: this node is down, drop them)."""


class InMemoryHub:
    """Connects the `InMemoryTransport`s of several nodes in one event loop.

    Controls: `isolate(*ids)` / `partition(group, ...)` / `heal()`, `block(src, dst)` for one direction,
    `drop_rate` (seeded), `delay` (virtual seconds through the clock, else next loop iteration).
    Connectivity is checked both when a message is sent and when it is delivered.
    """

    def __init__(self, clock: Clock, *, delay: float = 0.0, drop_rate: float = 0.0, seed: int = 0) -> None:
        self.clock = clock
        self.delay = delay
        self.drop_rate = drop_rate
        self.rng = random.Random(seed)
        self._receivers: dict[int, Receiver] = {}
        self._groups: list[frozenset[int]] | None = None
        self._blocked: set[tuple[int, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.delivered = 0

    def endpoint(self, node_id: int) -> InMemoryTransport:
        return InMemoryTransport(self, node_id)

    # --- fault controls ----------------------------------------------------------------------------

    def partition(self, *groups: Iterable[int]) -> None:
        """Only nodes in the same group talk; a node in no group talks to nobody."""
        self._groups = [frozenset(g) for g in groups]

    def isolate(self, *ids: int) -> None:
        others = set(self._receivers) - set(ids)
        self.partition(others, *[{i} for i in ids])

    def block(self, src: int, dst: int) -> None:
        self._blocked.add((src, dst))

    def heal(self) -> None:
        self._groups = None
        self._blocked.clear()

    def connected(self, src: int, dst: int) -> bool:
        if (src, dst) in self._blocked:
            return False
        if self._groups is None:
            return True
        return any(src in g and dst in g for g in self._groups)

    # --- delivery ----------------------------------------------------------------------------------

    def _send(self, messages: Sequence[Message]) -> None:
        loop = asyncio.get_running_loop()
        for m in messages:
            self.sent += 1
            if not self.connected(m.src, m.dst):
                continue
            if self.drop_rate and self.rng.random() < self.drop_rate:
                continue
            if self.delay > 0:
                t = loop.create_task(self._deliver_later(m))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
            else:
                loop.call_soon(self._deliver, m)

    async def _deliver_later(self, m: Message) -> None:
        await self.clock.sleep(self.delay)
        self._deliver(m)

    def _deliver(self, m: Message) -> None:
        recv = self._receivers.get(m.dst)
        if recv is None or not self.connected(m.src, m.dst):
            return
        self.delivered += 1
        recv(m)


class InMemoryTransport:
    """One node's endpoint on an `InMemoryHub`."""

    def __init__(self, hub: InMemoryHub, node_id: int) -> None:
        self.hub = hub
        self.id = node_id

    def send(self, messages: Sequence[Message]) -> None:
        if self.id in self.hub._receivers:  # a stopped node sends nothing
            self.hub._send(messages)

    def set_receiver(self, receive: Receiver | None) -> None:
        if receive is None:
            self.hub._receivers.pop(self.id, None)
        else:
            self.hub._receivers[self.id] = receive


class NullTransport:
    """A manager alone: nowhere to send (messages to others are dropped: there are none)."""

    def send(self, messages: Sequence[Message]) -> None:
        pass

    def set_receiver(self, receive: Receiver | None) -> None:
        pass
