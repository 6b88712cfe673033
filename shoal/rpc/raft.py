"""Raft between managers over gRPC with mutual TLS: the transport, the `Raft` service, and its clients.

Transport (`GrpcTransport`, the `shoal.manager.raft.transport.Transport` of a real manager): one sender per peer,
each with its own queue and one long-lived client stream (`Raft.Stream`) to the peer's secure listener, so a
slow or dead peer delays nobody else. Messages queued while a batch is being written go out together in the
next batch, up to MAX_BATCH messages and MAX_BATCH_BYTES (a single larger message goes alone, up to MAX_MESSAGE,
which both ends of a stream accept). Raft tolerates loss, so the transport never blocks the core: a full queue
or a broken stream drops messages and tells the core (`report_unreachable`, `report_snapshot`), which retries
at its own pace. A snapshot travels in 1 MiB chunks on the same stream (the receiver assembles it before
stepping the message), so a store of any size crosses gRPC's message limit. Once a received batch's messages are
stepped, the node handles the Ready they made in the same turn when it can (`RaftNode.ready_now`).

Addresses: a peer is known by its listen address (what `docker node inspect` shows as ManagerStatus.Addr);
the secure listener's port is asked from the peer's CA listener (as a worker finds it) and cached until a
stream to it fails. Raft ids map to listen addresses through the `AddressBook`: what this manager has learned
(join answers, membership changes, and every received batch, which names its sender) over what the store says
(each manager node's ManagerStatus), so a manager that just joined, whose store is still empty, can answer.

The service accepts manager certificates of this cluster only. Its `Join` (leader only) adds a manager to the
group; `Forward` runs an Engine API request on the leader's own API for a manager that is not the leader.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from shoal import ca as CA
from shoal.clock import Clock
from shoal.errors import InvalidArgument, NotLeader, ShoalError, Unavailable
from shoal.manager.membership import AddressBook, Members
from shoal.manager.raft.core import Entry, EntryType, Message, MsgType, Snapshot, SnapshotMeta
from shoal.manager.raft.node import RaftNode
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # snapshot bytes per stream message
MAX_QUEUE = 8192  # messages waiting for one peer before new ones are dropped
MAX_QUEUE_BYTES = 256 << 20  # entry bytes waiting for one peer before new messages are dropped
MAX_BATCH = 512  # messages per stream write
# Bytes per stream write: a batch closes before passing this, and a single larger message goes alone. A write
# past the receiver's limit fails the whole stream, so without a byte bound a follower far behind was sent the
# same too-large batch for ever.
MAX_BATCH_BYTES = 4 << 20
# The largest stream message either side of a Raft stream accepts (the node server takes the same, see
# shoal.rpc.server.SECURE_SERVER_OPTIONS): one entry alone in its batch must fit. The store refuses a transaction (one
# entry) past shoal.store.memory.MAX_TRANSACTION_BYTES, half of this.
MAX_MESSAGE = 64 << 20
_TYPES = list(MsgType)
_TYPE_NUM = {t: i for i, t in enumerate(_TYPES)}

RAFT_CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", CA.MANAGER_OU),
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


# --- messages -------------------------------------------------------------------------------------------


def msg_to_pb(m: Message) -> pb.RaftMsg:
    out = pb.RaftMsg(type=_TYPE_NUM[m.type], src=m.src, dst=m.dst, term=m.term, index=m.index, log_term=m.log_term,
                     commit=m.commit, reject=m.reject, reject_hint=m.reject_hint, context=m.context, force=m.force,
                     slack=m.slack)
    if m.entries:
        out.entries.extend(pb.RaftEntry(index=e.index, term=e.term, type=int(e.type), data=e.data) for e in m.entries)
    if m.snapshot is not None:
        meta = m.snapshot.meta
        out.has_snapshot = True
        out.snapshot_index, out.snapshot_term = meta.index, meta.term
        out.snapshot_voters.extend(sorted(meta.voters))
    return out


def msg_from_pb(p: pb.RaftMsg, snapshot_data: bytes = b"") -> Message:
    if p.type >= len(_TYPES):
        raise InvalidArgument(f"unknown raft message type {p.type}")
    snap = None
    if p.has_snapshot:
        snap = Snapshot(SnapshotMeta(p.snapshot_index, p.snapshot_term, frozenset(p.snapshot_voters)), snapshot_data)
    return Message(type=_TYPES[p.type], src=p.src, dst=p.dst, term=p.term, index=p.index, log_term=p.log_term,
                   entries=tuple(Entry(e.index, e.term, EntryType(e.type), e.data) for e in p.entries),
                   commit=p.commit, reject=p.reject, reject_hint=p.reject_hint, snapshot=snap,
                   context=p.context, force=p.force, slack=p.slack)


def wire_size(m: Message) -> int:
    """About the bytes `m` takes in a batch (its entries' data and a bound on every other field), without
    encoding it; a snapshot's data travels in chunks of its own and is not counted."""
    return 96 + len(m.context) + sum(len(e.data) + 32 for e in m.entries)


# --- addresses ------------------------------------------------------------------------------------------


Creds = tuple[str, str, str]  # key, certificate chain, trust roots (PEM)


class SecureAddrs:
    """A manager's secure listener (host:port), asked from its CA listener and cached until it fails."""

    def __init__(self, creds: Callable[[], Creds], timeout: float = 3.0) -> None:
        self._creds = creds
        self._cache: dict[str, str] = {}
        self.timeout = timeout

    def forget(self, listen_addr: str) -> None:
        self._cache.pop(listen_addr, None)

    async def resolve(self, listen_addr: str) -> str:
        cached = self._cache.get(listen_addr)
        if cached:
            return cached
        roots = self._creds()[2]
        async with grpc.aio.secure_channel(listen_addr, grpc.ssl_channel_credentials(roots.encode()),
                                           options=RAFT_CHANNEL_OPTIONS) as ch:
            try:
                resp = await pbg.CAStub(ch).GetRootCACertificate(pb.RootCARequest(), timeout=self.timeout)
            except grpc.aio.AioRpcError as e:
                raise Unavailable(f"manager {listen_addr} unreachable: {e.details()}") from None
        self._cache[listen_addr] = str(resp.secure_addr)
        return str(resp.secure_addr)


def mtls_channel(addr: str, creds: Creds) -> grpc.aio.Channel:
    key, cert, roots = creds
    return grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(roots.encode(), key.encode(), cert.encode()),
                                   options=RAFT_CHANNEL_OPTIONS)


# --- the transport --------------------------------------------------------------------------------------


class GrpcTransport:
    def __init__(self, raft_id: int, listen_addr: str, book: AddressBook, creds: Callable[[], Creds],
                 clock: Clock) -> None:
        self.id = raft_id
        self.listen_addr = listen_addr
        self.book = book
        self.creds = creds
        self.clock = clock
        self.secure = SecureAddrs(creds)
        self._receiver: Callable[[Message], None] | None = None
        self._peers: dict[int, _Peer] = {}
        self.node: RaftNode | None = None  # for report_unreachable / report_snapshot / ready_now
        self.last_heard: dict[int, float] = {}  # raft id -> monotonic time a batch from it last arrived
        self.sent_batches = 0
        self.received_batches = 0

    # Transport protocol
    def send(self, messages: Sequence[Message]) -> None:
        by_dst: dict[int, list[Message]] = {}
        for m in messages:
            if m.dst != self.id:
                by_dst.setdefault(m.dst, []).append(m)
        for dst, msgs in by_dst.items():
            peer = self._peers.get(dst)
            if peer is None:
                peer = self._peers[dst] = _Peer(self, dst)
            peer.enqueue(msgs)

    def set_receiver(self, receive: Callable[[Message], None] | None) -> None:
        self._receiver = receive

    # the servicer's side
    def deliver(self, m: Message) -> None:
        recv = self._receiver
        if recv is not None and m.dst == self.id:
            recv(m)

    def delivered_batch(self) -> None:
        """A batch from a peer was stepped: its Ready handled now if the node can (`RaftNode.ready_now`)."""
        if self.node is not None and self._receiver is not None:
            self.node.ready_now()

    def heard_from(self, raft_id: int) -> None:
        self.last_heard[raft_id] = self.clock.monotonic()

    def reachable(self, raft_id: int, within: float) -> bool:
        """Did a batch from this member arrive in the last `within` seconds (both directions work when it
        answers us; a leader hears every follower at each heartbeat)."""
        t = self.last_heard.get(raft_id)
        return t is not None and self.clock.monotonic() - t <= within

    def reset(self) -> None:
        """New credentials: every stream is opened again with them."""
        for p in self._peers.values():
            p.restart()

    def forget_peer(self, raft_id: int) -> None:
        p = self._peers.pop(raft_id, None)
        if p is not None:
            p.close()

    async def close(self) -> None:
        peers, self._peers = list(self._peers.values()), {}
        for p in peers:
            p.close()
        for p in peers:
            await p.wait_closed()

    def _report_unreachable(self, raft_id: int) -> None:
        if self.node is not None:
            self.node.report_unreachable(raft_id)

    def _report_snapshot(self, raft_id: int, ok: bool) -> None:
        if self.node is not None:
            self.node.report_snapshot(raft_id, ok)


class _Peer:
    def __init__(self, t: GrpcTransport, raft_id: int) -> None:
        self.t = t
        self.id = raft_id
        self.queue: deque[Message] = deque()
        self.queued_bytes = 0
        self.wake = asyncio.Event()
        # What the open stream waits on when the queue is empty: resolved by `enqueue` (or the stream's end), so
        # that a message queued goes out at the loop's next iteration, not after an Event waiter task and an
        # asyncio.wait have each taken one (three iterations of a loop that may be running hundreds of other
        # callbacks each: the latency of every Raft message, twice per write).
        self._waiter: asyncio.Future[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._closed = False
        self._dropping = False
        self._snapshot_in_flight = False
        self._task = asyncio.create_task(self._run(), name=f"raft-send-{raft_id:x}")

    def enqueue(self, msgs: list[Message]) -> None:
        size = sum(wire_size(m) for m in msgs)
        if len(self.queue) + len(msgs) > MAX_QUEUE or (self.queue and self.queued_bytes + size > MAX_QUEUE_BYTES):
            if not self._dropping:
                self._dropping = True
                self.t._report_unreachable(self.id)
            return
        self._dropping = False
        self.queue.extend(msgs)
        self.queued_bytes += size
        self.wake.set()
        self._wake_stream()

    def _wake_stream(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def clear(self) -> None:
        self.queue.clear()
        self.queued_bytes = 0

    def next_batch(self) -> list[Message]:
        """The messages of the next stream write: up to MAX_BATCH of them and MAX_BATCH_BYTES (a single
        larger message alone); a snapshot ends its batch (its data follows in chunks)."""
        msgs: list[Message] = []
        size = 0
        while self.queue and len(msgs) < MAX_BATCH:
            n = wire_size(self.queue[0])
            if msgs and size + n > MAX_BATCH_BYTES:
                break
            m = self.queue.popleft()
            self.queued_bytes -= n
            size += n
            if n > MAX_MESSAGE - 4096:
                # Never sent whole: the core would send it again for ever. Said loudly, and the peer is
                # reported so that the core probes again.
                log.error("raft: a message to %x of %d bytes is past the %d bytes a Raft stream carries; dropped",
                          self.id, n, MAX_MESSAGE)
                self.t._report_unreachable(self.id)
                continue
            msgs.append(m)
            if m.snapshot is not None:
                break
        return msgs

    def restart(self) -> None:
        if self._stream_task is not None:
            self._stream_task.cancel()

    def close(self) -> None:
        self._closed = True
        self._task.cancel()

    async def wait_closed(self) -> None:
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            self._stream_task = asyncio.ensure_future(self._stream())
            try:
                await self._stream_task
                backoff = 0.05
            except asyncio.CancelledError:
                if self._closed:
                    raise
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                continue  # restart() with new credentials
            except Exception as e:
                log.debug("raft stream to %x failed: %s", self.id, e)
                addr = self.t.book.addr(self.id)
                if addr:
                    self.t.secure.forget(addr)
                snapshot_lost = self._snapshot_in_flight or any(m.snapshot is not None for m in self.queue)
                self._snapshot_in_flight = False
                self.clear()  # stale by the time the peer is back; the core sends again
                self.t._report_unreachable(self.id)
                if snapshot_lost:
                    self.t._report_snapshot(self.id, False)
                await self.t.clock.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                self._stream_task = None

    async def _stream(self) -> None:
        addr = self.t.book.addr(self.id)
        if not addr:
            raise Unavailable(f"no address known for raft member {self.id:x}")
        secure = await self.t.secure.resolve(addr)
        channel = mtls_channel(secure, self.t.creds())
        call = pbg.RaftStub(channel).Stream()
        ended: asyncio.Future[Any] = asyncio.ensure_future(_finished(call))  # the peer refused or closed it
        ended.add_done_callback(lambda _f: self._wake_stream())
        loop = asyncio.get_running_loop()
        try:
            while True:
                if ended.done():
                    raise Unavailable(f"raft stream to {self.id:x} ended: {ended.result()}")
                if not self.queue:
                    self.wake.clear()
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                    continue
                msgs = self.next_batch()
                if msgs:
                    # In a call of its own: what it sent (a snapshot's data is the whole store) must not stay
                    # referenced from this loop's locals while the stream waits for the next batch.
                    await self._write(call, msgs)
                    del msgs
        finally:
            ended.cancel()
            call.cancel()
            await channel.close()

    async def _write(self, call: Any, msgs: list[Message]) -> None:
        """One batch on the stream; a snapshot (last in its batch) is followed by its data in chunks."""
        batch = pb.RaftBatch(sender_raft_id=self.t.id, sender_addr=self.t.listen_addr)
        batch.messages.extend(msg_to_pb(m) for m in msgs)
        snap = msgs[-1].snapshot
        if snap is None:
            await call.write(batch)
            self.t.sent_batches += 1
            return
        self._snapshot_in_flight = True
        data = snap.data
        batch.snapshot_chunk = data[:CHUNK]
        batch.snapshot_done = len(data) <= CHUNK
        await call.write(batch)
        for off in range(CHUNK, len(data), CHUNK):
            await call.write(pb.RaftBatch(snapshot_chunk=data[off:off + CHUNK],
                                          snapshot_done=off + CHUNK >= len(data)))
        self.t.sent_batches += 1
        self._snapshot_in_flight = False
        self.t._report_snapshot(self.id, True)


async def _finished(call: Any) -> str:
    """How a client stream ended (it only ends early: we never stop writing)."""
    try:
        await call
        return "closed by the peer"
    except grpc.aio.AioRpcError as e:
        return f"{e.code().name}: {e.details()}"


def members_to_pb(m: Members) -> pb.JoinRaftResponse:
    resp = pb.JoinRaftResponse(leader=m.leader)
    for rid, node_id, addr in m.members:
        resp.members.append(pb.RaftMember(raft_id=rid, node_id=node_id, addr=addr))
    return resp


# --- the service ----------------------------------------------------------------------------------------


@dataclass
class RaftHooks:
    """What the `Raft` service needs from its manager."""

    transport: GrpcTransport
    cluster_id: Callable[[], str]
    is_member_allowed: Callable[[str], bool]  # may this manager node (by node ID) talk Raft to us
    join: Callable[[str, int, str, str], Awaitable[Members]]  # (node id, raft id, addr, peer host)
    forward: Callable[[pb.ForwardRequest], AsyncIterator[pb.ForwardChunk]] | None
    on_peer_stream: Callable[[str, grpc.aio.ServicerContext], None] = lambda _n, _c: None


async def _identify_manager(hooks: RaftHooks, context: grpc.aio.ServicerContext) -> CA.NodeIdentity:
    """Manager certificates of this cluster only. Unlike the other node services this works with an empty store
    (a manager that just joined has not received the cluster yet), so the cluster comes from our own identity."""
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
    ident = CA.identity_of(pems[0])
    if ident.cluster_id != hooks.cluster_id():
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            "Permission denied: remote certificate not part of organization")
    if ident.role != "manager" or not hooks.is_member_allowed(ident.node_id):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"Permission denied: unauthorized peer role: rpc error: code = PermissionDenied "
                            f"desc = remote peer with role {CA.ROLE_OU.get(ident.role, '?')} is not allowed")
    return ident


def abort_details(e: ShoalError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """A ShoalError as (code, details, trailing metadata): a NotLeader carries where the leader is."""
    if isinstance(e, NotLeader):
        md: tuple[tuple[str, str], ...] = (("shoal-leader-addr", e.leader_addr), ("shoal-leader-id", e.leader_id))
        return grpc.StatusCode.FAILED_PRECONDITION, e.message, md
    from shoal.rpc.server import _status_of

    code, desc = _status_of(e)
    return code, desc, ()


def leader_hint(e: grpc.aio.AioRpcError) -> str:
    """The leader's listen address a NotLeader refusal carried ("" if none)."""
    for k, v in e.trailing_metadata() or ():
        if k == "shoal-leader-addr":
            return str(v)
    return ""


class RaftServicer(pbg.RaftServicer):
    def __init__(self, hooks: RaftHooks) -> None:
        self.h = hooks

    async def Stream(self, request_iterator: AsyncIterator[pb.RaftBatch],
                     context: grpc.aio.ServicerContext) -> pb.Empty:
        ident = await _identify_manager(self.h, context)
        self.h.on_peer_stream(ident.node_id, context)
        t = self.h.transport
        pending: pb.RaftMsg | None = None
        chunks: list[bytes] = []
        sender = 0
        async for batch in request_iterator:
            t.received_batches += 1
            if batch.sender_raft_id:
                sender = batch.sender_raft_id
                t.book.learn(sender, batch.sender_addr)
            if sender:
                t.heard_from(sender)
            for pm in batch.messages:
                if pm.has_snapshot:
                    pending, chunks = pm, [batch.snapshot_chunk]
                    continue
                t.deliver(msg_from_pb(pm))
            if not batch.messages and pending is not None:
                chunks.append(batch.snapshot_chunk)
            if pending is not None and batch.snapshot_done:
                t.deliver(msg_from_pb(pending, b"".join(chunks)))
                pending, chunks = None, []
            t.delivered_batch()
        return pb.Empty()

    async def Join(self, request: pb.JoinRaftRequest, context: grpc.aio.ServicerContext) -> pb.JoinRaftResponse:
        ident = await _identify_manager(self.h, context)
        from shoal.rpc.server import peer_host

        try:
            members: Members = await self.h.join(ident.node_id, int(request.raft_id), request.addr,
                                                 peer_host(context))
            return members_to_pb(members)
        except ShoalError as e:
            code, desc, md = abort_details(e)
            await context.abort(code, desc, trailing_metadata=md)
            raise  # unreachable: abort raises

    async def Forward(self, request: pb.ForwardRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ForwardChunk]:
        await _identify_manager(self.h, context)
        if self.h.forward is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this manager does not serve forwarded requests")
            return
        try:
            async for chunk in self.h.forward(request):
                yield chunk
        except ShoalError as e:
            code, desc, md = abort_details(e)
            await context.abort(code, desc, trailing_metadata=md)

    async def ForwardMux(self, request_iterator: AsyncIterator[pb.ForwardMuxBatch],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ForwardMuxBatch]:
        """A follower's writes on one stream (shoal.rpc.forwardmux): each request runs as it arrives, and the
        answers ready at the same moment go back in one message. One stream instead of a call per write,
        because the asyncio server accepts new calls one at a time, which capped forwarded writes at a few
        hundred a second."""
        await _identify_manager(self.h, context)
        serve = self.h.forward
        if serve is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this manager does not serve forwarded requests")
            return
        done: asyncio.Queue[pb.ForwardMuxItem | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def one(item_id: int, req: pb.ForwardRequest) -> None:
            done.put_nowait(await mux_answer(item_id, serve(req)))

        async def read() -> None:
            try:
                async for batch in request_iterator:
                    for item in batch.items:
                        t = asyncio.create_task(one(item.id, item.request))
                        running.add(t)
                        t.add_done_callback(running.discard)
            finally:
                done.put_nowait(None)  # the follower closed its side (or the stream broke): nothing more to answer

        reader = asyncio.create_task(read())
        try:
            while True:
                first = await done.get()
                if first is None:
                    return
                items, size, end = [first], first.ByteSize(), False
                while not done.empty() and size < MUX_BATCH_BYTES:
                    nxt = done.get_nowait()
                    if nxt is None:
                        end = True
                        break
                    items.append(nxt)
                    size += nxt.ByteSize()
                yield pb.ForwardMuxBatch(items=items)
                if end:
                    return
        finally:
            reader.cancel()
            for t in list(running):
                t.cancel()


MUX_BATCH_BYTES = 4 << 20  # answers gathered into one message up to this (one larger answer goes alone)


async def mux_answer(item_id: int, chunks: AsyncIterator[pb.ForwardChunk]) -> pb.ForwardMuxItem:
    """Request `item_id`'s whole answer as one item (its head with the body's length and the body), or the error
    it failed with, in the terms a call's status would have carried it."""
    head: pb.ForwardChunk | None = None
    data = bytearray()
    try:
        async for chunk in chunks:
            if head is None:
                head = chunk
            data += chunk.data
    except ShoalError as e:
        code, desc, md = abort_details(e)
        return pb.ForwardMuxItem(id=item_id, error_code=code.name, error_details=desc, error_metadata=dict(md))
    except Exception as e:  # a bug on this side must still answer the request, not leave it waiting
        log.exception("forwarded request %d failed", item_id)
        return pb.ForwardMuxItem(id=item_id, error_code=grpc.StatusCode.INTERNAL.name, error_details=str(e))
    if head is None:
        return pb.ForwardMuxItem(id=item_id, error_code=grpc.StatusCode.INTERNAL.name,
                                 error_details="the leader's API gave no answer")
    answer = pb.ForwardChunk(status=head.status, data=bytes(data))
    for k, v in head.headers.items():
        answer.headers[k] = v
    answer.headers["Content-Length"] = str(len(data))
    return pb.ForwardMuxItem(id=item_id, answer=answer)


# --- clients ---------------------------------------------------------------------------------------------


async def join_raft(secure: SecureAddrs, listen_addr: str, creds: Creds, raft_id: int, my_addr: str,
                    timeout: float = 30.0) -> tuple[pb.JoinRaftResponse, str]:
    """Ask the leader (found from `listen_addr`, following NotLeader hints) to add us; (answer, leader addr)."""
    addr = listen_addr
    last: Exception | None = None
    for _ in range(5):
        target = await secure.resolve(addr)
        async with mtls_channel(target, creds) as ch:
            try:
                resp = await pbg.RaftStub(ch).Join(pb.JoinRaftRequest(raft_id=raft_id, addr=my_addr), timeout=timeout)
                return resp, addr
            except grpc.aio.AioRpcError as e:
                hint = leader_hint(e)
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION and hint and hint != addr:
                    addr = hint
                    continue
                from shoal.rpc.client import from_rpc_error

                last = from_rpc_error(e)
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
                    secure.forget(addr)
                    await asyncio.sleep(0.5)
                    continue
                raise last from None
    raise Unavailable(f"could not join the managers' Raft group through {listen_addr}: {last}")


class LeaderChannels:
    """One long-lived mutual-TLS channel per manager a follower forwards to (the TLS handshake is most of a
    call's cost), opened again after a failure or when the credentials change."""

    def __init__(self, secure: SecureAddrs, creds: Callable[[], Creds]) -> None:
        self.secure = secure
        self.creds = creds
        self._channels: dict[str, tuple[Creds, grpc.aio.Channel]] = {}

    async def get(self, listen_addr: str) -> grpc.aio.Channel:
        creds = self.creds()
        cur = self._channels.get(listen_addr)
        if cur is not None and cur[0] == creds:
            return cur[1]
        if cur is not None:
            await cur[1].close()
        ch = mtls_channel(await self.secure.resolve(listen_addr), creds)
        self._channels[listen_addr] = (creds, ch)
        return ch

    async def drop(self, listen_addr: str) -> None:
        cur = self._channels.pop(listen_addr, None)
        self.secure.forget(listen_addr)
        if cur is not None:
            await cur[1].close()

    async def close(self) -> None:
        for addr in list(self._channels):
            await self.drop(addr)


async def forward(channels: LeaderChannels, leader_addr: str,
                  request: pb.ForwardRequest) -> AsyncIterator[pb.ForwardChunk]:
    """Run an Engine API request on the leader; yields the leader's answer (status and headers, then body)."""
    ch = await channels.get(leader_addr)
    call = pbg.RaftStub(ch).Forward(request)
    try:
        async for chunk in call:
            yield chunk
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            await channels.drop(leader_addr)
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION and leader_hint(e):
            raise NotLeader(e.details() or "not the leader", leader_hint(e)) from None
        from shoal.rpc.client import from_rpc_error

        raise from_rpc_error(e) from None
    finally:
        call.cancel()


__all__ = ["GrpcTransport", "LeaderChannels", "RaftHooks", "RaftServicer", "SecureAddrs",
           "forward", "join_raft", "leader_hint", "msg_from_pb", "msg_to_pb"]
