"""A user-space load balancer for service VIPs and the ingress routing mesh (no IPVS needed).

`TCPBalancer` accepts connections and splices each to one backend chosen round-robin from a dynamic set
(read on every new connection, so a removed backend gets no new connection, while established ones run to
their end). `UDPBalancer` keeps one session per client address: the first datagram picks a backend, later
ones follow it, replies go back to the client; a session ends after `idle_timeout` seconds without traffic.

Options, per listener:

- `proxy_protocol`: send a PROXY protocol v2 header to the backend first (TCP: once at the start; UDP: in
  front of every datagram), carrying the real client address and port and the address it connected to.
- `local_only` with `local_node`: only backends on this node (the client's address is then kept end to end
  without any source NAT, since the connection never leaves the node).
- TCP keepalive on both sockets (`keepalive`), so a long-idle connection through the balancer is kept alive
  by the kernels and a dead peer is noticed, rather than silently dropped by a middlebox.

Half-close is forwarded: when one side shuts its write half, the balancer shuts the write half toward the
other side and keeps relaying the other direction until it ends too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from shoal.net.directory import Endpoint
from shoal.tasks import cancel_all

log = logging.getLogger(__name__)

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclass(frozen=True, slots=True)
class Backend:
    host: str
    port: int
    node_id: str = ""


BackendSource = Callable[[], Sequence[Backend]]
# How to open the connection to a backend (given the client's address) when not from this namespace: the
# routing mesh connects from the node's address inside the ingress network's namespace, or from the client's
# own address (transparent) for local-only services.
Connector = Callable[[Backend, tuple[str, int]], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
# A connected, non-blocking datagram socket toward the backend, for the flow of this client address.
UDPSocketFactory = Callable[[Backend, tuple[str, int]], socket.socket]


@dataclass(frozen=True, slots=True)
class KeepAlive:
    idle: int = 60  # seconds without traffic before the first probe
    interval: int = 15
    count: int = 4


def set_keepalive(sock: socket.socket | None, ka: KeepAlive | None) -> None:
    if sock is None or ka is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", ka.idle), ("TCP_KEEPINTVL", ka.interval), ("TCP_KEEPCNT", ka.count)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


# --- PROXY protocol v2 ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    source: tuple[str, int]
    destination: tuple[str, int]
    stream: bool  # TCP (True) or UDP (False)


def proxy_v2_header(source: tuple[str, int], destination: tuple[str, int], *, stream: bool = True) -> bytes:
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:  # an IPv4 client on a dual-stack socket: map it
        src = ipaddress.IPv6Address(f"::ffff:{src}") if src.version == 4 else src
        dst = ipaddress.IPv6Address(f"::ffff:{dst}") if dst.version == 4 else dst
    family = 0x10 if src.version == 4 else 0x20
    proto = 0x01 if stream else 0x02
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return PROXY_V2_SIGNATURE + bytes([0x21, family | proto]) + struct.pack("!H", len(body)) + body


def parse_proxy_v2(data: bytes) -> tuple[ProxyHeader | None, int]:
    """Parse a PROXY v2 header at the start of `data`: (header, bytes it takes); (None, 0) when `data` does
    not start with one; raises ValueError if it is malformed, or incomplete (`len(data)` too short)."""
    if not data.startswith(PROXY_V2_SIGNATURE):
        if PROXY_V2_SIGNATURE.startswith(data[:12]) and len(data) < 12:
            raise ValueError("incomplete PROXY v2 header")
        return None, 0
    if len(data) < 16:
        raise ValueError("incomplete PROXY v2 header")
    ver_cmd, fam = data[12], data[13]
    (length,) = struct.unpack("!H", data[14:16])
    if ver_cmd >> 4 != 2:
        raise ValueError("not PROXY protocol version 2")
    if len(data) < 16 + length:
        raise ValueError("incomplete PROXY v2 header")
    body = data[16:16 + length]
    family, proto = fam >> 4, fam & 0x0F
    if family == 1 and length >= 12:
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == 2 and length >= 36:
        src = str(ipaddress.IPv6Address(body[0:16]))
        dst = str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = struct.unpack("!HH", body[32:36])
    else:
        raise ValueError(f"unsupported PROXY v2 address family {fam:#x}")
    return ProxyHeader((src, sport), (dst, dport), proto == 1), 16 + length


# --- choosing ---------------------------------------------------------------------------------------------


@dataclass
class Picker:
    """Round-robin over the current backends, optionally only this node's."""

    backends: BackendSource
    local_only: bool = False
    local_node: str = ""
    _next: int = 0

    def candidates(self) -> list[Backend]:
        bs = list(self.backends())
        if self.local_only:
            bs = [b for b in bs if b.node_id == self.local_node]
        if not bs:
            return []
        start = self._next % len(bs)
        self._next += 1
        return bs[start:] + bs[:start]


# --- TCP -------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Connection:
    client: tuple[str, int]
    backend: Backend
    client_sock: socket.socket | None
    backend_sock: socket.socket | None


@dataclass
class TCPBalancer:
    backends: BackendSource
    proxy_protocol: bool = False
    local_only: bool = False
    local_node: str = ""
    keepalive: KeepAlive | None = field(default_factory=KeepAlive)
    connect_timeout: float = 5.0
    connector: Connector | None = None

    def __post_init__(self) -> None:
        self._picker = Picker(self.backends, self.local_only, self.local_node)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.connections: set[Connection] = set()  # open now
        self.address: tuple[str, int] = ("", 0)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port)
        name = self._server.sockets[0].getsockname()
        self.address = (name[0], name[1])
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_all(list(self._handlers))
        if self._server is not None:
            await self._server.wait_closed()

    async def _connect(self, client: tuple[str, int]) -> tuple[Backend, asyncio.StreamReader,
                                                                   asyncio.StreamWriter] | None:
        for b in self._picker.candidates():
            try:
                async with asyncio.timeout(self.connect_timeout):
                    if self.connector is not None:
                        r, w = await self.connector(b, client)
                    else:
                        r, w = await asyncio.open_connection(b.host, b.port)
                return b, r, w
            except (OSError, TimeoutError) as e:
                log.info("backend %s:%d refused a connection: %s", b.host, b.port, e)
        return None

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        conn: Connection | None = None
        bwriter: asyncio.StreamWriter | None = None
        try:
            peer = cwriter.get_extra_info("peername")
            local = cwriter.get_extra_info("sockname")
            set_keepalive(cwriter.get_extra_info("socket"), self.keepalive)
            got = await self._connect((peer[0], peer[1]))
            if got is None:
                log.warning("no backend for a connection from %s", peer)
                return
            backend, breader, bwriter = got
            set_keepalive(bwriter.get_extra_info("socket"), self.keepalive)
            conn = Connection((peer[0], peer[1]), backend, cwriter.get_extra_info("socket"),
                              bwriter.get_extra_info("socket"))
            self.connections.add(conn)
            if self.proxy_protocol:
                bwriter.write(proxy_v2_header((peer[0], peer[1]), (local[0], local[1])))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(creader, bwriter))
                tg.create_task(_pump(breader, cwriter))
        except* (ConnectionError, OSError) as eg:
            log.debug("connection ended: %s", eg.exceptions[0])
        finally:
            if conn is not None:
                self.connections.discard(conn)
            for w in (cwriter, bwriter):
                if w is not None:
                    w.close()
            self._handlers.discard(me)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then shut the write half of the other side (half-close)."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


# --- UDP -------------------------------------------------------------------------------------------------


class _Session(asyncio.DatagramProtocol):
    def __init__(self, lb: UDPBalancer, client: tuple[str, int], backend: Backend) -> None:
        self.lb = lb
        self.client = client
        self.backend = backend
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.last = asyncio.get_running_loop().time()
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector's is not a subclass
        for d in self.pending:
            self.transport.sendto(d)
        self.pending.clear()
        self._arm()

    def send(self, data: bytes) -> None:
        self.last = asyncio.get_running_loop().time()
        if self.lb.proxy_protocol:
            data = proxy_v2_header(self.client, self.lb.address, stream=False) + data
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last = asyncio.get_running_loop().time()
        if self.lb._listener is not None:
            self.lb._listener.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp backend %s: %s", self.backend, exc)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_at(self.last + self.lb.idle_timeout, self._check)

    def _check(self) -> None:
        if asyncio.get_running_loop().time() >= self.last + self.lb.idle_timeout:
            self.close()
        else:
            self._arm()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.close()
        self.lb._ended(self)


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, lb: UDPBalancer) -> None:
        self.lb = lb

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.lb._from_client(data, (addr[0], addr[1]))


@dataclass
class UDPBalancer:
    backends: BackendSource
    proxy_protocol: bool = False
    local_only: bool = False
    local_node: str = ""
    idle_timeout: float = 30.0
    on_session_end: Callable[[tuple[str, int], Backend], None] | None = None
    sock_factory: UDPSocketFactory | None = None

    def __post_init__(self) -> None:
        self._picker = Picker(self.backends, self.local_only, self.local_node)
        self._listener: asyncio.DatagramTransport | None = None
        self.sessions: dict[tuple[str, int], _Session] = {}
        self._opening: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("", 0)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Listener(self), local_addr=(host, port))
        self._listener = transport
        name = transport.get_extra_info("sockname")
        self.address = (name[0], name[1])
        return self.address

    async def close(self) -> None:
        for t in list(self._opening):
            t.cancel()
        for s in list(self.sessions.values()):
            s.close()
        if self._listener is not None:
            self._listener.close()

    def _from_client(self, data: bytes, client: tuple[str, int]) -> None:
        s = self.sessions.get(client)
        if s is None:
            cands = self._picker.candidates()
            if not cands:
                log.warning("no backend for a datagram from %s", client)
                return
            s = _Session(self, client, cands[0])
            self.sessions[client] = s
            t = asyncio.get_running_loop().create_task(self._open(s))
            self._opening.add(t)
            t.add_done_callback(self._opening.discard)
        s.send(data)

    async def _open(self, s: _Session) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.sock_factory is not None:
                await loop.create_datagram_endpoint(lambda: s, sock=self.sock_factory(s.backend, s.client))
            else:
                await loop.create_datagram_endpoint(lambda: s, remote_addr=(s.backend.host, s.backend.port))
        except OSError as e:
            log.info("udp backend %s:%d: %s", s.backend.host, s.backend.port, e)
            s.close()

    def _ended(self, s: _Session) -> None:
        if self.sessions.get(s.client) is s:
            del self.sessions[s.client]
        if self.on_session_end is not None:
            self.on_session_end(s.client, s.backend)


# --- wiring to the service directory ----------------------------------------------------------------------


class EndpointSource(Protocol):
    def endpoints(self, service_id: str, network_id: str, *, local_only: bool = False) -> list[Endpoint]: ...


def service_backends(directory: EndpointSource, service_id: str, network_id: str, target_port: int) -> BackendSource:
    """The serving tasks of a service on a network, at `target_port`, read afresh for every new connection
    or UDP flow (a VIP listener uses the service's network; the ingress mesh uses the ingress network)."""
    return lambda: [Backend(e.ip, target_port, e.node_id) for e in directory.endpoints(service_id, network_id)]
