"""The embedded DNS server a task's resolver points at (Docker's 127.0.0.11).

One `DNSServer` serves one view: the networks of the task(s) behind it, in order (the first network that
knows a name answers). Names the directory knows are answered from it (A records; PTR for the addresses
of tasks and VIPs; an empty NOERROR answer for other types of our names); every other name is forwarded to
the upstream servers in turn with dnspython, over UDP (TCP when the answer is truncated, or when the client
asked over TCP). Nothing answers from a cache: TTL 0 on our records by default, so a client never holds an
address after its task stops serving.

Queries arrive over UDP and TCP (two-byte length prefix, several queries per connection). UDP answers
larger than the client's limit (512 bytes, or its EDNS size) are truncated (TC set) so it retries over TCP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence

import dns.asyncquery
import dns.exception
import dns.message
from dnslib import AAAA, PTR, QTYPE, RCODE, RR, A, DNSRecord

from shoal.net.directory import ServiceDirectory
from shoal.tasks import cancel_all

log = logging.getLogger(__name__)

Networks = Sequence[str] | Callable[[], Sequence[str]]


def parse_upstream(s: str) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:53`, `[::1]:53` -> (host, port)."""
    if s.startswith("["):
        host, _sep, rest = s[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if s.count(":") == 1:
        host, port = s.split(":")
        return host, int(port)
    return s, 53


def _reverse_ip(qname: str) -> str | None:
    """The address a PTR query name stands for, or None."""
    name = qname.rstrip(".").lower()
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) == 4:
            return ".".join(reversed(parts))
    elif name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) == 32:
            h = "".join(reversed(nibbles))
            return str(ipaddress.IPv6Address(int(h, 16)))
    return None


class DNSServer:
    def __init__(self, directory: ServiceDirectory, networks: Networks, *,
                 upstreams: Sequence[str | tuple[str, int]] = (), ttl: int = 0,
                 upstream_timeout: float = 2.0, rng: random.Random | None = None,
                 view: Callable[[str], Sequence[str]] | None = None,
                 hold: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.directory = directory
        self._networks = networks
        # With `view`, the networks are those of whoever asks (by source address): one server on a network's
        # gateway answers every task on it.
        self.view = view
        # Awaited before a name of ours is answered to whoever asks (by source address): until it can use it.
        self.hold = hold
        self.upstreams = [parse_upstream(u) if isinstance(u, str) else u for u in upstreams]
        self.ttl = ttl
        self.upstream_timeout = upstream_timeout
        self.rng = rng or random.Random()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("", 0)

    @property
    def networks(self) -> Sequence[str]:
        return self._networks() if callable(self._networks) else self._networks

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on UDP and TCP on the same port (port 0: any free one); return the address."""
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._serve_tcp, host, port)
        bound = self._tcp.sockets[0].getsockname()
        transport, _proto = await loop.create_datagram_endpoint(lambda: _UDP(self), local_addr=(host, bound[1]))
        self._udp = transport
        self.address = (bound[0], bound[1])
        return self.address

    async def start_on(self, udp: socket.socket, tcp: socket.socket, addr: tuple[str, int]) -> None:
        """Serve on sockets made by the caller (created in a task's network namespace), bound here to `addr`."""
        loop = asyncio.get_running_loop()
        for s in (udp, tcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.setblocking(False)
        tcp.listen(128)
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
        transport, _proto = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=udp)
        self._udp = transport
        self.address = addr

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        await cancel_all(list(self._inflight))

    # --- answering ------------------------------------------------------------------------------------

    def answer_local(self, req: DNSRecord, client: str = "") -> DNSRecord | None:
        """Our answer to `req`, or None when the name is not ours (forward it)."""
        networks = self.view(client) if self.view is not None else self.networks
        q = req.q
        qname = str(q.qname)
        reply = req.reply()
        reply.header.ra = 1
        if q.qtype == QTYPE.PTR:
            ip = _reverse_ip(qname)
            for net in networks if ip is not None else ():
                names = self.directory.reverse(ip or "", net)
                if names:
                    for n in names:
                        reply.add_answer(RR(qname, QTYPE.PTR, rdata=PTR(n + "."), ttl=self.ttl))
                    return reply
            return None
        for net in networks:
            ips = self.directory.lookup(qname, net)
            if not ips:
                continue
            ips = list(ips)
            self.rng.shuffle(ips)
            for ip in ips:
                v6 = ":" in ip
                if q.qtype == QTYPE.A and not v6:
                    reply.add_answer(RR(qname, QTYPE.A, rdata=A(ip), ttl=self.ttl))
                elif q.qtype == QTYPE.AAAA and v6:
                    reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=self.ttl))
            return reply  # our name: other types get an empty NOERROR answer
        return None

    async def resolve(self, data: bytes, *, tcp: bool, client: str = "") -> bytes | None:
        """Wire query in, wire answer out (None: not even a header could be read)."""
        try:
            req = DNSRecord.parse(data)
        except Exception:
            return None
        try:
            local = self.answer_local(req, client)
            if local is not None and self.hold is not None:
                await self.hold(client)
                local = self.answer_local(req, client)
        except Exception:
            log.exception("answering %s", req.q.qname)
            return self._error(req, RCODE.SERVFAIL)
        if local is not None:
            packed: bytes = local.pack()
            limit = 512
            for rr in req.ar:
                if rr.rtype == QTYPE.OPT:
                    limit = max(512, int(rr.rclass))
            if not tcp and len(packed) > limit:
                local.rr = []
                local.header.tc = 1
                packed = local.pack()
            return packed
        return await self._forward(req, data, tcp=tcp)

    def _error(self, req: DNSRecord, rcode: int) -> bytes:
        reply = req.reply()
        reply.header.ra = 1
        reply.header.rcode = rcode
        out: bytes = reply.pack()
        return out

    async def _forward(self, req: DNSRecord, data: bytes, *, tcp: bool) -> bytes:
        if not self.upstreams:
            return self._error(req, RCODE.SERVFAIL)
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return self._error(req, RCODE.FORMERR)
        for host, port in self.upstreams:
            try:
                if tcp:
                    resp = await dns.asyncquery.tcp(query, host, timeout=self.upstream_timeout, port=port)
                else:
                    resp, _tcp = await dns.asyncquery.udp_with_fallback(
                        query, host, timeout=self.upstream_timeout, port=port)
                return resp.to_wire()
            except (dns.exception.DNSException, OSError) as e:
                log.info("upstream %s:%d failed for %s: %s", host, port, req.q.qname, e)
        return self._error(req, RCODE.SERVFAIL)

    # --- transports -----------------------------------------------------------------------------------

    def _udp_query(self, data: bytes, addr: tuple[str, int]) -> None:
        async def go() -> None:
            out = await self.resolve(data, tcp=False, client=addr[0])
            if out is not None and self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(out, addr)

        t = asyncio.get_running_loop().create_task(go())
        self._inflight.add(t)
        t.add_done_callback(self._inflight.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._inflight.add(me)
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        try:
            while True:
                try:
                    head = await reader.readexactly(2)
                    data = await reader.readexactly(struct.unpack("!H", head)[0])
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                out = await self.resolve(data, tcp=True, client=client)
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        finally:
            writer.close()
            if me is not None:
                self._inflight.discard(me)


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server._udp_query(data, addr)
