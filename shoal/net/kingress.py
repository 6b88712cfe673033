"""The routing mesh in the kernel: published ports DNATed to the serving tasks by nftables, no proxy.

Two stages, as Swarm's ingress sandbox has, with nftables where Swarm needs IPVS:

- the node's namespace DNATs a new connection (or UDP flow) to one of the node's own addresses on a published
  port to the ingress namespace's end of a veth pair (`shm<token>` here, `mesh0` there, a /30 of 169.254/16:
  link-local, so it collides with no network a host routes, and nothing in the host's main table changes but
  that /30);
- the ingress namespace DNATs it to a serving task's ingress address (round robin, `numgen inc`) and, unless the
  service is local-only, SNATs it to the node's own ingress address, so the task's reply comes back through
  this node. A local-only service's tasks are this node's, and they see the client's own address: their reply
  reaches the ingress namespace through their default route.

Both stages only forward what they DNATed: nothing else enters the ingress namespace from the host, and no task
reaches out through it. Conntrack keeps an established connection on its task, the rules are rewritten when
the serving set changes, and the node's own conntrack timeouts apply (5 days for an idle TCP connection, where
IPVS's 900 s cut Swarm's).

Used only where the node's namespace forwards IPv4 (`net.ipv4.ip_forward=1`, as on every host that runs
Docker): Shoal never makes a host a router. The user-space balancer (shoal.net.mesh) still holds every
published port: it serves clients on the node itself (their packets are not routed), services that ask for the
PROXY protocol or keepalive, nodes that do not forward, and ports the kernel path has no task for.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import shlex
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import TemporaryError
from shoal.host import ipcmd
from shoal.net.links import OWNER_ALIAS, node_token

log = logging.getLogger(__name__)

NS_IF = "mesh0"
NS_TABLE = "shoal_ingress"
LINK_POOL = ipaddress.IPv4Network("169.254.64.0/18")  # the /30s of the veth pairs (16,384 of them)
MARK_SNAT, MARK_LOCAL = 1, 2  # conntrack marks in the ingress namespace: source NAT or not
CT_SNAT_BIT = 0x02000000  # the conntrack mark bit of a flow to source-NAT, in the node's namespace (others' bits kept)


@dataclass(frozen=True)
class KernelPort:
    """A published port the kernel serves: its protocol and number, the tasks' port and ingress addresses."""

    proto: str
    published: int
    target: int
    backends: tuple[str, ...]
    local_only: bool


def host_table(node_id: str) -> str:
    """The node's nftables table in its own namespace."""
    return f"shoal_in_{node_token(node_id)}"


def host_link(node_id: str) -> str:
    return f"shm{node_token(node_id)}"


def _link_net(node_id: str, attempt: int) -> ipaddress.IPv4Network:
    """The node's /30 for the veth pair; another on each attempt (a host may have taken the first)."""
    h = int.from_bytes(hashlib.sha256(f"{node_id}/{attempt}".encode()).digest()[:4], "big")
    count = LINK_POOL.num_addresses // 4
    return ipaddress.IPv4Network((int(LINK_POOL.network_address) + (h % count) * 4, 30))


def forwards() -> bool:
    """Does this process's network namespace forward IPv4?"""
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return False


def host_script(node_id: str, ns_addr: str, ports: list[KernelPort]) -> str:
    """The node namespace's rules: published ports to the ingress namespace, and nothing else into it."""
    table, link = host_table(node_id), host_link(node_id)
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{",
             "  chain pre {", "    type nat hook prerouting priority dstnat; policy accept;"]
    for proto in ("tcp", "udp"):
        nums = sorted({p.published for p in ports if p.proto == proto})
        if nums:
            lines.append(f"    fib daddr type local {proto} dport {{ {', '.join(map(str, nums))} }} counter "
                         f"dnat to {ns_addr}")
    lines += ["  }", "  chain through {", "    type filter hook forward priority filter; policy accept;",
              f'    oifname "{link}" ct status dnat accept', f'    oifname "{link}" drop', "  }", "}", ""]
    return "\n".join(lines)


def _dnat(p: KernelPort) -> str:
    """The DNAT statement of a port: to its task, or round robin over its tasks."""
    ips = sorted(p.backends)
    to = ips[0] if len(ips) == 1 else \
        f"numgen inc mod {len(ips)} map {{ {', '.join(f'{i} : {ip}' for i, ip in enumerate(ips))} }}"
    return f"dnat to {to} : {p.target}"


def bridge_script(node_id: str, bridge: str, src: str, ports: list[KernelPort]) -> str:
    """One stage, where the ingress bridge is in the node's namespace (the docker executor): each port to its
    tasks, and source NAT to `src` on the way into the bridge unless local-only."""
    table = host_table(node_id)
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{",
             "  chain pre {", "    type nat hook prerouting priority dstnat; policy accept;"]
    for p in sorted(ports, key=lambda p: (p.proto, p.published)):
        mark = "" if p.local_only else f"ct mark set ct mark or {CT_SNAT_BIT:#x} "
        lines.append(f"    fib daddr type local {p.proto} dport {p.published} counter {mark}{_dnat(p)}")
    lines += ["  }", "  chain post {", "    type nat hook postrouting priority srcnat; policy accept;",
              f'    oifname "{bridge}" ct mark and {CT_SNAT_BIT:#x} == {CT_SNAT_BIT:#x} snat to {src}',
              "  }", "}", ""]
    return "\n".join(lines)


def ns_script(src: str, ports: list[KernelPort]) -> str:
    """The ingress namespace's rules: each port to its tasks, source NAT to `src` (the node's ingress
    address) unless local-only, and only those flows (and their replies) through the veth."""
    lines = [f"table ip {NS_TABLE}", f"delete table ip {NS_TABLE}", f"table ip {NS_TABLE} {{",
             "  chain pre {", "    type nat hook prerouting priority dstnat; policy accept;"]
    for p in sorted(ports, key=lambda p: (p.proto, p.published)):
        mark = MARK_LOCAL if p.local_only else MARK_SNAT
        lines.append(f'    iifname "{NS_IF}" {p.proto} dport {p.published} counter ct mark set {mark} {_dnat(p)}')
    lines += ["  }", "  chain post {", "    type nat hook postrouting priority srcnat; policy accept;",
              f"    ct mark {MARK_SNAT} snat to {src}", "  }",
              "  chain through {", "    type filter hook forward priority filter; policy accept;",
              f'    iifname "{NS_IF}" ct status dnat accept', f'    iifname "{NS_IF}" drop',
              f'    oifname "{NS_IF}" ct state established,related accept', f'    oifname "{NS_IF}" drop', "  }",
              "  chain inp {", "    type filter hook input priority filter; policy accept;",
              f'    iifname "{NS_IF}" drop', "  }", "}", ""]
    return "\n".join(lines)


async def _docker_user(node_id: str, rules: list[list[str]]) -> bool:
    """Where Docker's iptables rules drop what they do not know (its FORWARD policy), the kernel mesh's traffic
    is let through in DOCKER-USER, the chain Docker leaves to the host's own rules: exactly `rules` (none:
    every one of this node's goes), each marked with a comment naming the node. False when there is no such
    chain (no Docker, or one that leaves iptables alone: nothing drops the mesh's packets)."""
    if shutil.which("iptables") is None:
        return False
    try:
        listed = await ipcmd.run("iptables", "-S", "DOCKER-USER")
    except ipcmd.CommandFailed:
        return False
    tag = ["-m", "comment", "--comment", f"shoal-mesh:{node_token(node_id)}"]
    want = [[*r[:-2], *tag, *r[-2:]] for r in rules]
    have = [shlex.split(line)[2:] for line in listed.splitlines() if tag[-1] in line]
    for r in have:
        if r not in want:
            await ipcmd.run("iptables", "-D", "DOCKER-USER", *r, check=False)
    for r in want:
        if r not in have:
            await ipcmd.run("iptables", "-I", "DOCKER-USER", *r)
    return True


async def remove_host_rules(node_id: str) -> None:
    """The node namespace's rules of the kernel mesh (its table, and its DOCKER-USER exceptions)."""
    await ipcmd.run("nft", "delete", "table", "ip", host_table(node_id), check=False)
    await _docker_user(node_id, [])


def _inode(ns: Path) -> int:
    """The namespace's own inode (a namespace made again at the same path has another)."""
    try:
        return os.stat(ns).st_ino
    except OSError:
        return 0


def _has_link(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


class KernelIngress:
    """The kernel routing mesh of one node: its rules, written only when they change, and, where the ingress
    network has a namespace of its own (the process executor), the veth pair into it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._ns: tuple[Path, int] | None = None  # the ingress namespace the veth pair is in (path, inode)
        self._ns_addr = ""
        self._scripts = ("?", "?")  # what is written: unknown at first, so a previous run's rules are replaced
        self._refused = False  # told the log why not, once
        self._allowed: list[list[str]] | None = None  # the DOCKER-USER exceptions written (None: none known)

    def usable(self) -> bool:
        """Can this node route the mesh in the kernel (its namespace forwards)? Logs once when it cannot."""
        if forwards():
            self._refused = False
            return True
        if not self._refused:
            log.info("routing mesh: this node's namespace does not forward IPv4 (net.ipv4.ip_forward=0); published "
                     "ports go through the user-space balancer")
            self._refused = True
        return False

    async def program(self, ns: Path | None, bridge: str, src: str, ports: list[KernelPort]) -> None:
        """The rules as `ports` say, for an ingress network in namespace `ns` (two stages and the veth pair,
        which stays while the namespace does) or, when `ns` is None, on `bridge` in the node's namespace (one
        stage). No port: no rules of the node's anywhere (those a previous run left go too)."""
        if not ports:
            if self._scripts != ("", ""):
                await remove_host_rules(self.node_id)
                self._allowed = None
                if ns is not None and ipcmd.is_netns(ns):
                    await ipcmd.run("nft", "delete", "table", "ip", NS_TABLE, netns=str(ns), check=False)
                self._scripts = ("", "")
            return
        if ns is None:
            host, inner = bridge_script(self.node_id, bridge, src, ports), ""
            allow = [["-o", bridge, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"]]
        else:
            # Made again for a namespace made again (same path, another inode) or a link gone (either end of a
            # veth pair takes the other with it); checked with a system call, not a process, per snapshot.
            if self._ns != (ns, _inode(ns)) or not _has_link(host_link(self.node_id)):
                await self._make_link(ns)
            host, inner = host_script(self.node_id, self._ns_addr, ports), ns_script(src, ports)
            link = host_link(self.node_id)
            allow = [["-o", link, "-j", "ACCEPT"], ["-i", link, "-j", "ACCEPT"]]
        if (host, inner) == self._scripts:
            return
        # The exceptions depend on the link or bridge only: written again when it changes, not per backend.
        if allow != self._allowed and await _docker_user(self.node_id, allow):
            self._allowed = allow
        if inner:  # the inner stage first: a connection the host sends in always finds its task's rule
            await ipcmd.nft(inner, netns=str(ns))
        await ipcmd.nft(host)
        self._scripts = (host, inner)

    async def close(self) -> None:
        """The node namespace's rules go (the veth pair goes with the ingress namespace). Called for every
        snapshot while nothing is published: only the first call after rules were written (or after start,
        for a previous run's) runs a command."""
        self._ns, self._ns_addr = None, ""
        if self._scripts != ("", ""):
            await remove_host_rules(self.node_id)
            self._scripts, self._allowed = ("", ""), None

    async def _taken(self) -> set[ipaddress.IPv4Network]:
        """The networks of the node namespace's IPv4 addresses (another /30 is picked around them)."""
        out = await ipcmd.run("ip", "-j", "-4", "addr", "show", check=False)
        try:
            return {ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
                    for ln in json.loads(out or "[]") for a in ln.get("addr_info", [])}
        except (ValueError, KeyError):
            return set()

    async def _make_link(self, ns: Path) -> None:
        link = host_link(self.node_id)
        await ipcmd.run("ip", "link", "del", link, check=False)  # a pair left by a namespace made before
        taken = await self._taken()
        net = next((n for a in range(64) if not any((n := _link_net(self.node_id, a)).overlaps(t) for t in taken)),
                   None)
        if net is None:
            raise TemporaryError(f"routing mesh: no free /30 in {LINK_POOL} for the ingress namespace's link")
        host_addr, ns_addr = (str(h) for h in net.hosts())
        await ipcmd.run("ip", "link", "add", NS_IF, "type", "veth", "peer", "name", link, "netns",
                        f"/proc/{os.getpid()}/ns/net", netns=str(ns))
        await ipcmd.ip_batch([f"link set {link} alias {OWNER_ALIAS}{self.node_id}",
                              f"addr add {host_addr}/30 dev {link}", f"link set {link} up"])
        await ipcmd.ip_batch([f"addr add {ns_addr}/30 dev {NS_IF}", f"link set {NS_IF} up",
                              f"route replace default via {host_addr} dev {NS_IF}"], netns=str(ns))
        # Forwarding in the ingress namespace carries only what its rules DNATed (the `through` chain).
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{NS_IF}.rp_filter=0"):
            await ipcmd.run("sysctl", "-qw", key, netns=str(ns))
        self._ns, self._ns_addr, self._scripts = (ns, _inode(ns)), ns_addr, ("?", "?")
