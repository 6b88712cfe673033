"""Forgetting connections to VIPs that the kernel tracked before the VIP rules existed (ctnetlink, stdlib only).

A container's namespace is made by the engine, which starts the process right away; Shoal's VIP rules go in
just after. A connection the process opened in between was tracked without the DNAT (the engine's own nat
rules for its embedded DNS make conntrack run in every container namespace), and since NAT is decided once
per tracked connection, its SYN retransmissions keep going to the VIP, which nobody answers: the connection
fails after the ARP timeout. Deleting those entries once the rules are in lets the next retransmission be
tracked anew, DNATed to a task, and the connection succeeds about a second late instead of failing.

`forget_unnated(netns, vips)` dumps the namespace's IPv4 conntrack table and deletes every entry whose
original destination is one of `vips` and whose reply still comes from that address (no DNAT happened).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

from shoal.host import nsutil

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_TUPLE_IP = 1
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
NLA_TYPE_MASK = 0x3FFF


def _attrs(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(type, payload, the whole attribute) of each netlink attribute in `data`."""
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, data[off + 4:off + length], data[off:off + length]
        off += (length + 3) & ~3


def _ips(tuple_attr: bytes) -> tuple[str, str]:
    src = dst = ""
    for kind, payload, _ in _attrs(tuple_attr):
        if kind == CTA_TUPLE_IP:
            for k, v, _ in _attrs(payload):
                if k == CTA_IP_V4_SRC:
                    src = str(ipaddress.IPv4Address(v))
                elif k == CTA_IP_V4_DST:
                    dst = str(ipaddress.IPv4Address(v))
    return src, dst


def _request(kind: int, flags: int, seq: int, body: bytes = b"") -> bytes:
    payload = struct.pack("=BBH", socket.AF_INET, 0, 0) + body  # nfgenmsg: family, version, res_id
    return struct.pack("=IHHII", 16 + len(payload), (NFNL_SUBSYS_CTNETLINK << 8) | kind, flags, seq, 0) + payload


def _messages(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """(type, payload after the nfgenmsg) of each message of a dump, until it is done."""
    while True:
        data = sock.recv(1 << 16)
        off = 0
        while off + 16 <= len(data):
            length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, off + 16)
                if err:
                    raise OSError(-err, os.strerror(-err))
                return
            yield kind, data[off + 20:off + length]
            off += (length + 3) & ~3


def forget_unnated(netns: str | None, vips: set[str]) -> int:
    """Delete the tracked connections to `vips` that were not DNATed, in the namespace at `netns`; how many."""
    if not vips:
        return 0
    sock = nsutil.socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.settimeout(5)
        sock.bind((0, 0))
        sock.send(_request(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1))
        stale: list[bytes] = []
        for _kind, payload in _messages(sock):
            orig = reply = b""
            orig_attr = b""
            for k, v, whole in _attrs(payload):
                if k == CTA_TUPLE_ORIG:
                    orig, orig_attr = v, whole
                elif k == CTA_TUPLE_REPLY:
                    reply = v
            _src, dst = _ips(orig)
            if dst in vips and _ips(reply)[0] == dst:
                stale.append(orig_attr)
        for i, tup in enumerate(stale, start=2):
            sock.send(_request(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, i, tup))
            try:
                for _ in _messages(sock):
                    pass
            except FileNotFoundError:  # gone meanwhile
                pass
        return len(stale)
    finally:
        sock.close()
