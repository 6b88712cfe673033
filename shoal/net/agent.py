"""The per-node network agent: overlays, task sandboxes, DNS, VIP rules and the routing mesh on one node.

Fed by a `NetFeed` (cluster state as snapshots; see shoal.net.state), it keeps the kernel in line with it:

Overlay networks. Each network with a sandbox on this node gets a network namespace of its own
(`<root>/ns/n-<network id>`) holding a bridge `br0` with the gateway address and a VXLAN device (VNI =
the network's, UDP port = the cluster's data path port, `nolearning proxy`). The VXLAN device is created in
the node's namespace (its UDP socket stays on the underlay) under a name only this node uses, marked as its
own (ifalias `shoal-node:<node ID>`), then moved into the network namespace and named `vx<VNI>` there. Remote
endpoints are programmed, not learned: for every address of a task on another node (and every other node's
ingress address), a permanent neighbour entry IP -> MAC (the VXLAN device answers ARP from them: `proxy`)
and a forwarding entry MAC -> that node's underlay address. MACs are derived from IPs (02:42 + the four
bytes, as libnetwork does), so no node has to tell another its MACs. MTU: the network's
`com.docker.network.driver.mtu` option, else 1450 (1500 less the VXLAN overhead). No VXLAN device on a
node whose address is loopback: such nodes share one machine and cannot tunnel to each other.

Task sandboxes (process executor). A task with networks runs in its own namespace (`<root>/ns/t-<task>`):
one veth per network (`eth<i>` inside, with the task's address and derived MAC; the other end on the
network's bridge), a default route through the first network that is not internal, and:
- DNS: a server at 127.0.0.11:53 (UDP and TCP) bound inside the namespace and served by this process, its
  view the task's networks (not ingress); names it does not know go upstream, unless every network of the
  task is internal. The task's resolv.conf (bound over /etc/resolv.conf when it starts) points there.
- VIPs: an nftables table in the namespace DNATs new connections and flows (TCP, UDP, any port) to each VIP
  of a service on the task's networks to one of its serving tasks, in turn (`numgen inc`); the rules are
  rewritten whenever the set of serving tasks changes, so a task that stops serving gets no new
  connection. A VIP without serving task rejects (TCP reset / ICMP unreachable) instead of timing out.

Routing mesh. For every port published in ingress mode, a user-space balancer on the node (0.0.0.0) sends
each connection (or UDP flow) to a serving task's ingress address, from this node's own ingress address
inside the ingress network's namespace, so replies come back through the tunnel. Options, as service labels:
`com.shoal.mesh.proxy-protocol=true` (a PROXY v2 header with the real client address first) and
`com.shoal.mesh.local-only=true` (only tasks on the receiving node, from the client's own address through a
transparent socket; a client on the node's loopback is sent from the node's ingress address instead).
Host-mode ports of a process task in its own namespace are forwarded from the node to the task the same way,
with one backend.

Docker executor: overlays are bridge networks of the engine (the VXLAN device on the bridge, DNS on the
gateway answering each container by its address). Both devices are in the host namespace, named with a token
of this node's ID and marked as its own; a device of such a name that is not is neither adopted nor deleted.
VIP rules go into each container's namespace once it runs; until then the gateway DNS holds its answers to
it, and connections it opened to a VIP before that (by address) are made to retry (shoal.net.conntrack).
Plain containers on attachable networks are followed by shoal.net.plain.

A container's namespace is held by a handle of its own (`<root>/ns/c-<task>`, bound from the namespace opened
with a pidfd of the container's process, see shoal.host.nsutil), never reached through `/proc/<pid>`: a pid
names another process once the container's is reaped, possibly in the node's own namespace. A sandbox whose
task has ended (it left the snapshot) is no longer programmed, and a container's handle is let go then.

Restart: namespaces, veths and task processes outlive the daemon; a new agent adopts the sandboxes it finds
(DNS listeners and VIP rules again) and recreates each network's VXLAN device (its entries are reprogrammed
from the first snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.errors import FatalError, ShoalError, TemporaryError
from shoal.host import ipcmd, nsutil
from shoal.model.objects import Network, Service, Task
from shoal.net import conntrack
from shoal.net.dns import DNSServer
from shoal.net.lb import Backend, KeepAlive, TCPBalancer, UDPBalancer
from shoal.net.links import (
    MTU_OPTION,
    OWNER_ALIAS,
    delete_owned_link,
    host_bridge_name,
    host_vxlan_name,
    ip_of,
    link_alias,
    loopback,
    mac_of,
    network_mtu,
)
from shoal.net.state import LatestFeed, NetFeed, NetState, SnapshotDirectory
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)

LABEL_PROXY_PROTOCOL = "com.shoal.mesh.proxy-protocol"
LABEL_LOCAL_ONLY = "com.shoal.mesh.local-only"
DNS_ADDR = "127.0.0.11"
IP_TRANSPARENT = 19  # linux/in.h
# Docker executor, local-only mesh: replies from containers to a transparent socket in the node's own
# namespace carry this mark and are routed by this table, to the socket (only packets from Shoal's bridges).
HOST_TPROXY_MARK = 0x5B01
HOST_TPROXY_TABLE = 23297
NOWHERE_MAC = "02:42:00:00:00:00"  # the MAC of 0.0.0.0 by the 02:42 rule: no endpoint ever has it
KNOWN_NETWORK_TIMEOUT = 10.0  # seconds an attach waits for a network to reach this node's feed
NO_NS = Path("/nonexistent")  # the namespace of a container sandbox not (or no longer) held
RULES_WAIT = 8.0  # seconds at most a container's DNS answer waits for its VIP rules (a resolver tries twice 5 s)


def _truthy(v: str | None) -> bool:
    return (v or "").lower() in ("1", "true", "yes", "on", "v2")


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What an executor needs to run a task attached to its networks."""

    netns: str
    resolv_conf: str


@dataclass(frozen=True, slots=True)
class ContainerNetworks:
    """What the docker executor connects a container to: (engine network name, IPv4 address, aliases) in
    order (the first one at create), and the resolv.conf to bind over /etc/resolv.conf."""

    endpoints: tuple[tuple[str, str, tuple[str, ...]], ...]
    resolv_conf: str


@dataclass
class _Net:
    net: Network
    ns: Path | None  # None: the node's own namespace (the docker executor's bridges live there)
    bridge: str = "br0"
    engine_name: str = ""  # docker executor: the engine's bridge network standing for this overlay
    vxlan: bool = False
    peers: dict[str, tuple[str, str]] = field(default_factory=dict)  # ip -> (mac, vtep) programmed
    extra_addr: str = ""  # this node's ingress address on br0 (ingress only)

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.net.ipam.configs[0].subnet, strict=False)

    @property
    def gateway(self) -> str:
        gw = self.net.ipam.configs[0].gateway
        return gw or str(next(self.subnet.hosts()))


@dataclass
class _Box:
    task_id: str
    ns: Path
    networks: list[str]  # network ids, in the task's order
    addrs: list[str]
    dns: DNSServer | None = None
    nft_script: str = ""
    container: bool = False  # a docker container's namespace (held at `ns` once it runs), not one of ours
    seen: bool = False  # its task has been in a snapshot (leaving it later means the task ended)
    pid: int = 0  # a container's: the process whose namespace `ns` holds
    # A container's: its VIP rules have been written (or never will be); its DNS answers wait for it.
    rules_in: asyncio.Event = field(default_factory=asyncio.Event)


class NetworkAgent:
    def __init__(self, node_id: str, addr: str, root: Path, feed: NetFeed, *,
                 dns_upstreams: Sequence[str] = (), keepalive: KeepAlive | None = None,
                 engine_host: str | None = None) -> None:
        self.node_id = node_id
        self.addr = addr
        self.root = Path(root)
        self.ns_dir = self.root / "ns"
        self.feed = LatestFeed(feed)
        self.upstreams = list(dns_upstreams)
        self.keepalive = keepalive or KeepAlive()
        self.engine_host = engine_host  # docker executor: overlays are bridges of that engine (shoal.net.docker)
        self.directory = SnapshotDirectory(node_id)
        self.state = NetState()
        self.ready = asyncio.Event()  # the first snapshot is in
        self._nets: dict[str, _Net] = {}
        self._boxes: dict[str, _Box] = {}
        self._ingress: dict[tuple[str, int], tuple[tuple[str, int, bool, bool], TCPBalancer | UDPBalancer]] = {}
        # host-mode ports of process tasks in their own namespace: (proto, port) -> ((task, target, proxy), lb)
        self._host_ports: dict[tuple[str, int], tuple[tuple[str, int, bool], TCPBalancer | UDPBalancer]] = {}
        self._lock = asyncio.Lock()
        self._docker: Any = None  # aiodocker client (docker executor)
        self._gw_dns: dict[str, DNSServer] = {}  # network id -> DNS on its gateway (docker executor)
        self._by_ip: dict[str, _Box] = {}  # a container's address -> its sandbox (who asks the gateway DNS)
        self._host_tproxy = False  # the node-namespace mark rule and route of local-only are in (docker executor)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        # Plain containers on attachable networks (docker executor; shoal.net.plain): the attacher asks the
        # leader for their addresses (shoal.node.attacher, set by shoal.node.network).
        self.attacher: Any = None
        self.plain: Any = None

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.ns_dir.mkdir(parents=True, exist_ok=True)
        await self._adopt()
        self.feed.start()
        self._task = asyncio.create_task(self._run(), name="network-agent")
        if self.engine_host is not None:
            from shoal.net.plain import PlainContainers

            self.plain = PlainContainers(self, release=self._release_attachment)
            self.plain.start()

    async def _release_attachment(self, attachment_id: str) -> None:
        if self.attacher is not None:
            await self.attacher.detach(attachment_id)

    async def close(self) -> None:
        """Stop serving (DNS, balancers); namespaces stay for the tasks that keep running (containers' are
        not held any more: a stopped daemon keeps none alive)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.feed.close()
        if self.plain is not None:
            await self.plain.close()
        for _key, lb in [*self._ingress.values(), *self._host_ports.values()]:
            await lb.close()
        self._ingress.clear()
        self._host_ports.clear()
        for box in self._boxes.values():
            if box.dns is not None:
                await box.dns.close()
                box.dns = None
            if box.container:
                await self._release_netns(box)  # held again by the next agent, once it sees it running
        for dns in self._gw_dns.values():
            await dns.close()
        self._gw_dns.clear()
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def _run(self) -> None:
        while True:
            state = await self.feed.next()
            try:
                async with self._lock:
                    await self._apply(state)
            except asyncio.CancelledError:
                raise
            except ShoalError as e:  # an expected failure (the engine, a command): one line, the next try follows
                log.warning("network agent: applying cluster state %d failed: %s", state.version, e.message)
            except Exception:
                log.exception("network agent: applying cluster state %d failed", state.version)
            self.ready.set()
            self._changed.set()

    async def synced(self, version: int, timeout: float = 10.0) -> bool:
        """Wait until a snapshot of store version `version` (or later) has been applied."""
        async with asyncio.timeout(timeout):
            while self.state.version < version:
                self._changed.clear()
                await self._changed.wait()
        return True

    # --- applying a snapshot --------------------------------------------------------------------------

    async def _apply(self, state: NetState) -> None:
        self.state = state
        self.directory.update(state)
        for nid, ln in list(self._nets.items()):
            net = state.networks.get(nid)
            if net is not None:
                ln.net = net
            await self._program_peers(ln)
        for box in list(self._boxes.values()):
            if await self._ended(box):
                continue
            await self._program_vips(box)
        await self._program_ingress()
        await self._program_host_ports()

    async def _ended(self, box: _Box) -> bool:
        """Has the box's task ended (it was in a snapshot and left)? Its namespace is not entered again, and
        a container's handle is let go. Plain containers (shoal.net.plain) are not tasks: engine events end
        theirs."""
        if box.task_id.startswith("ctr-"):
            return False
        if box.task_id in self.state.tasks:
            box.seen = True
            return False
        if not box.seen:
            return False  # not in a snapshot yet: the feed lags behind the assignment
        if box.container and box.ns != NO_NS:
            await self._release_netns(box)
        box.rules_in.set()
        return True

    def _remote_endpoints(self, net_id: str) -> dict[str, tuple[str, str]]:
        """ip -> (mac, vtep) of everything on `net_id` that lives on another node."""
        out: dict[str, tuple[str, str]] = {}
        st = self.state
        for t in st.tasks.values():
            if t.node_id == self.node_id:
                continue
            node = st.nodes.get(t.node_id)
            if node is None or loopback(node.addr):
                continue
            for att in t.networks:
                if att.network_id == net_id:
                    for a in att.addresses:
                        ip = ip_of(a)
                        out[ip] = (mac_of(ip), node.addr)
        ingress = st.ingress
        if ingress is not None and ingress.id == net_id:
            for nid, node in st.nodes.items():
                if nid != self.node_id and node.ingress and not loopback(node.addr):
                    ip = ip_of(node.ingress)
                    out[ip] = (mac_of(ip), node.addr)
        return out

    async def _program_peers(self, ln: _Net) -> None:
        if not ln.vxlan:
            return
        want = self._remote_endpoints(ln.net.id)
        dev = self._vxlan_name(ln)
        ip_lines: list[str] = []
        br_lines: list[str] = []
        for ip, (mac, vtep) in ln.peers.items():
            if want.get(ip) != (mac, vtep):
                ip_lines.append(f"neigh del {ip} dev {dev}")
                br_lines.append(f"fdb del {mac} dev {dev} self")
        for ip, (mac, vtep) in want.items():
            if ln.peers.get(ip) != (mac, vtep):
                ip_lines.append(f"neigh replace {ip} lladdr {mac} dev {dev} nud permanent")
                br_lines.append(f"fdb replace {mac} dev {dev} dst {vtep} self permanent")
        ns = str(ln.ns) if ln.ns is not None else None
        try:
            # Deletions of entries that are already gone fail harmlessly; -force carries on.
            await ipcmd.ip_batch(br_lines, netns=ns, tool="bridge")
        except ipcmd.CommandFailed as e:
            log.debug("fdb update on %s: %s", ln.net.name, e.message)
        try:
            await ipcmd.ip_batch(ip_lines, netns=ns)
        except ipcmd.CommandFailed as e:
            log.debug("neighbour update on %s: %s", ln.net.name, e.message)
        ln.peers = want

    # --- overlay networks -----------------------------------------------------------------------------

    def _vxlan_name(self, ln: _Net) -> str:
        """In a namespace of the node's own `vx<VNI>`; in the host namespace a name only this node uses."""
        return f"vx{ln.net.vni}" if ln.ns is not None else host_vxlan_name(self.node_id, ln.net.vni)

    @staticmethod
    def _engine_network(net: Network) -> str:
        return f"shoal-{net.id[:12]}"

    def _net_ns(self, net_id: str) -> Path:
        return self.ns_dir / f"n-{net_id[:20]}"

    async def _known_network(self, net_id: str) -> Network:
        deadline = asyncio.get_running_loop().time() + KNOWN_NETWORK_TIMEOUT
        while net_id not in self.state.networks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TemporaryError(f"network {net_id} is not known on this node yet")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return self.state.networks[net_id]

    async def _ensure_net(self, net: Network) -> _Net:
        ln = self._nets.get(net.id)
        if ln is not None:
            return ln
        if not net.ipam.configs or not net.ipam.configs[0].subnet:
            raise TemporaryError(f"network {net.name} has no subnet allocated yet")
        mtu = network_mtu(net)
        if self.engine_host is not None:
            ln = await self._ensure_engine_net(net, mtu)
            await self._ensure_vxlan(ln, mtu)
            self._nets[net.id] = ln
            await self._program_peers(ln)
            return ln
        ln = _Net(net=net, ns=self._net_ns(net.id))
        assert ln.ns is not None
        ns = str(ln.ns)
        fresh = not ipcmd.is_netns(ln.ns)
        await ipcmd.create_netns(ln.ns)
        if fresh:
            await ipcmd.ip_batch([
                "link add br0 type bridge",
                f"link set br0 mtu {mtu}",
                f"addr add {ln.gateway}/{ln.subnet.prefixlen} dev br0",
                "link set br0 up",
            ], netns=ns)
            # Routed packets between two local tasks never leave the bridge; nothing else is forwarded.
            await ipcmd.run("sysctl", "-qw", "net.ipv4.ip_forward=0", netns=ns, check=False)
            if net.spec.ingress:
                # Local-only mesh connections come from the client's own address (a transparent socket here):
                # the task's replies to it reach br0 through its default route; packets of a transparent
                # socket are marked and delivered locally, to it (TPROXY's recipe; ARP is untouched).
                await ipcmd.nft("table ip shoal_mesh {\n  chain pre {\n    type filter hook prerouting priority "
                                "mangle; policy accept;\n    socket transparent 1 meta mark set 1\n  }\n}\n",
                                netns=ns)
                await ipcmd.ip_batch(["rule add fwmark 1 lookup 100 priority 100",
                                      "route add local 0.0.0.0/0 dev lo table 100"], netns=ns)
        await self._ensure_vxlan(ln, mtu)
        self._nets[net.id] = ln
        await self._program_peers(ln)
        return ln

    async def _ensure_vxlan(self, ln: _Net, mtu: int) -> None:
        if loopback(self.addr):
            return
        dev = self._vxlan_name(ln)
        ns = str(ln.ns) if ln.ns is not None else None
        # Adopted: start from no entries. In the host namespace only a device marked as this node's goes.
        if ns is not None:
            await ipcmd.run("ip", "link", "del", dev, netns=ns, check=False)
        else:
            await delete_owned_link(dev, self.node_id)
        # Made in the host namespace (its UDP socket stays on the underlay) under a name only this node uses,
        # marked as this node's at once; renamed once in a namespace of its own.
        made = host_vxlan_name(self.node_id, ln.net.vni)
        added = False
        try:
            await ipcmd.run("ip", "link", "add", made, "type", "vxlan", "id", str(ln.net.vni), "dstport",
                            str(self.state.data_path_port), "local", self.addr, "nolearning", "proxy")
            added = True
            await ipcmd.run("ip", "link", "set", made, "alias", OWNER_ALIAS + self.node_id)
            if ns is not None:
                await ipcmd.run("ip", "link", "set", made, "netns", ns)
                await ipcmd.run("ip", "link", "set", made, "name", dev, netns=ns)
        except ipcmd.CommandFailed as e:
            if added:
                await delete_owned_link(made, self.node_id)
                if ns is not None:
                    await ipcmd.run("ip", "link", "del", made, netns=ns, check=False)
            log.warning("no VXLAN device for network %s (tasks on other nodes unreachable): %s", ln.net.name,
                        e.message)
            return
        await ipcmd.ip_batch([f"link set {dev} mtu {mtu}", f"link set {dev} master {ln.bridge}",
                              f"link set {dev} up"], netns=ns)
        ln.vxlan = True
        ln.peers = {}

    async def _ensure_ingress_addr(self, ln: _Net) -> str:
        """This node's own ingress address on the ingress bridge (and the bridge's MAC derived from it, which
        is what other nodes programmed for it)."""
        me = self.state.nodes.get(self.node_id)
        cidr = me.ingress if me is not None else ""
        if not cidr or ln.extra_addr == cidr:
            return ip_of(cidr) if cidr else ""
        ns = str(ln.ns) if ln.ns is not None else None
        if ln.extra_addr:
            await ipcmd.run("ip", "addr", "del", ln.extra_addr, "dev", ln.bridge, netns=ns, check=False)
        await ipcmd.ip_batch([f"link set {ln.bridge} address {mac_of(ip_of(cidr))}",
                              f"addr replace {cidr} dev {ln.bridge}"], netns=ns)
        ln.extra_addr = cidr
        return ip_of(cidr)

    async def _gc_nets(self) -> None:
        used = {n for b in self._boxes.values() for n in b.networks}
        ingress = self.state.ingress
        for nid, ln in list(self._nets.items()):
            if nid in used or (ingress is not None and nid == ingress.id and self._ingress):
                continue
            del self._nets[nid]
            if ln.ns is not None:
                await ipcmd.delete_netns(ln.ns)
            else:
                await self._drop_engine_net(ln)

    # --- sandboxes --------------------------------------------------------------------------------------

    def _box_ns(self, task_id: str) -> Path:
        return self.ns_dir / f"t-{task_id}"

    async def attach_process(self, task: Task) -> Sandbox | None:
        """A network namespace for `task`, attached to its networks with its addresses (idempotent)."""
        if not task.networks:
            return None
        nets = [await self._known_network(a.network_id) for a in task.networks]
        async with self._lock:
            box = self._boxes.get(task.id)
            if box is None:
                box = await self._create_box(task, nets)
            await self._program_host_ports()
            return Sandbox(netns=str(box.ns), resolv_conf=str(self._resolv(task.id)))

    def _resolv(self, task_id: str) -> Path:
        return self.ns_dir / f"t-{task_id}.resolv"

    def _meta(self, task_id: str) -> Path:
        return self.ns_dir / f"t-{task_id}.json"

    async def _create_box(self, task: Task, nets: list[Network]) -> _Box:
        ns = self._box_ns(task.id)
        await ipcmd.delete_netns(ns)  # a half-made one from before a crash
        await ipcmd.create_netns(ns)
        box = _Box(task.id, ns, [n.id for n in nets], [])
        try:
            routed = False
            for i, (att, net) in enumerate(zip(task.networks, nets, strict=True)):
                ln = await self._ensure_net(net)
                if not att.addresses:
                    raise TemporaryError(f"task {task.id} has no address on network {net.name}")
                cidr = att.addresses[0]
                box.addrs.append(cidr)
                mtu = network_mtu(net)
                host_if = f"v{task.id[:11]}{i}"
                await ipcmd.ip_batch([
                    f"link add {host_if} mtu {mtu} type veth peer name eth{i} netns {ns}",
                    f"link set {host_if} master br0",
                    f"link set {host_if} up",
                ], netns=str(ln.ns))
                lines = [f"link set eth{i} address {mac_of(ip_of(cidr))} mtu {mtu}", f"addr add {cidr} dev eth{i}",
                         f"link set eth{i} up"]
                if not routed and not net.spec.internal:
                    lines.append(f"route add default via {ln.gateway} dev eth{i}")
                    routed = True
                await ipcmd.ip_batch(lines, netns=str(ns))
            self._resolv(task.id).write_text(f"nameserver {DNS_ADDR}\noptions ndots:0\n")
            await self._serve_box(box)
            self._meta(task.id).write_text(json.dumps({"networks": box.networks, "addrs": box.addrs}))
        except BaseException:
            await self._drop_box(box)
            raise
        self._boxes[task.id] = box
        return box

    async def _serve_box(self, box: _Box) -> None:
        nets = [self.state.networks.get(n) for n in box.networks]
        view = [n.id for n in nets if n is not None and not n.spec.ingress]
        internal_only = all(n is not None and (n.spec.internal or n.spec.ingress) for n in nets)
        dns = DNSServer(self.directory, view, upstreams=[] if internal_only else self.upstreams)
        udp = nsutil.socket_in(str(box.ns), socket.AF_INET, socket.SOCK_DGRAM)
        tcp = nsutil.socket_in(str(box.ns), socket.AF_INET, socket.SOCK_STREAM)
        try:
            await dns.start_on(udp, tcp, (DNS_ADDR, 53))
        except BaseException:
            udp.close()
            tcp.close()
            raise
        box.dns = dns
        box.nft_script = ""
        await self._program_vips(box)

    async def detach(self, task_id: str) -> None:
        """Remove the task's sandbox (idempotent; also for tasks this agent never saw)."""
        async with self._lock:
            box = self._boxes.pop(task_id, None) or _Box(task_id, self._box_ns(task_id), [], [])
            if box.container:
                await self._release_netns(box)
            else:
                await ipcmd.delete_netns(self._handle(task_id))  # a container's, from before a restart
            for ip in box.addrs:
                ip = ip_of(ip) if "/" in ip else ip
                if self._by_ip.get(ip) is box:
                    del self._by_ip[ip]
            await self._drop_box(box)
            await self._program_host_ports()
            await self._gc_nets()

    async def _drop_box(self, box: _Box) -> None:
        if box.dns is not None:
            await box.dns.close()
            box.dns = None
        # The veth pairs go with the namespace; their bridge ends with them.
        if not box.container:
            await ipcmd.delete_netns(box.ns)
        for p in (self._resolv(box.task_id), self._meta(box.task_id)):
            p.unlink(missing_ok=True)

    async def _adopt(self) -> None:
        for handle in sorted(self.ns_dir.glob("c-*")):
            await ipcmd.delete_netns(handle)  # containers' namespaces are held again once seen running
        for meta in sorted(self.ns_dir.glob("t-*.json")):
            task_id = meta.name[2:-5]
            ns = self._box_ns(task_id)
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            if not ipcmd.is_netns(ns):
                meta.unlink(missing_ok=True)
                continue
            self._boxes[task_id] = _Box(task_id, ns, list(data.get("networks", [])), list(data.get("addrs", [])))
        if self._boxes:
            asyncio.get_running_loop().create_task(self._readopt(), name="network-adopt")

    async def _readopt(self) -> None:
        """Once the first snapshot is in: networks, DNS and VIP rules of the adopted sandboxes again."""
        await self.ready.wait()
        async with self._lock:
            for box in list(self._boxes.values()):
                try:
                    for nid in box.networks:
                        net = self.state.networks.get(nid)
                        if net is not None:
                            await self._ensure_net(net)
                    if box.dns is None:
                        await self._serve_box(box)
                except Exception:
                    log.exception("re-adopting the sandbox of task %s failed", box.task_id)

    # --- VIPs ---------------------------------------------------------------------------------------------

    def _vip_script(self, box: _Box) -> str:
        return self._vip_rules(box)[0]

    def _vip_rules(self, box: _Box) -> tuple[str, set[str]]:
        """The nft script for the box's VIPs, and the VIPs it DNATs (those with a serving task)."""
        nat: list[str] = []
        natted: set[str] = set()
        reject: list[str] = []
        mine = {n for n in box.networks if (net := self.state.networks.get(n)) is not None and not net.spec.ingress}
        for svc in sorted(self.state.services.values(), key=lambda s: s.id):
            for vip in svc.endpoint.virtual_ips:
                if vip.network_id not in mine:
                    continue
                v = ip_of(vip.addr)
                ips = sorted(e.ip for e in self.directory.endpoints(svc.id, vip.network_id))
                if not ips:
                    reject.append(f"    ip daddr {v} meta l4proto tcp reject with tcp reset")
                    reject.append(f"    ip daddr {v} reject")
                elif len(ips) == 1:
                    nat.append(f"    ip daddr {v} dnat to {ips[0]}")
                    natted.add(v)
                else:
                    m = ", ".join(f"{i} : {ip}" for i, ip in enumerate(ips))
                    nat.append(f"    ip daddr {v} dnat to numgen inc mod {len(ips)} map {{ {m} }}")
                    natted.add(v)
        return "\n".join([
            "table ip shoal", "delete table ip shoal", "table ip shoal {",
            "  chain vip {", "    type nat hook output priority -100; policy accept;", *nat, "  }",
            "  chain novip {", "    type filter hook output priority 0; policy accept;", *reject, "  }",
            "}", ""]), natted

    async def _program_vips(self, box: _Box) -> None:
        if box.container and not ipcmd.is_netns(box.ns):
            return  # a container not running (yet, or any more): its rules go in once it runs
        script, natted = self._vip_rules(box)
        if script == box.nft_script:
            return
        try:
            await ipcmd.nft(script, netns=str(box.ns))
            box.nft_script = script
            box.rules_in.set()
        except ipcmd.CommandFailed as e:
            log.warning("VIP rules for task %s: %s", box.task_id, e.message)
            return
        if box.container and natted:
            await self._retry_early_vip_connections(box, natted)

    async def _retry_early_vip_connections(self, box: _Box, vips: set[str]) -> None:
        """The engine started the container's process before its VIP rules could exist. A connection it opened
        to a VIP meanwhile was tracked without DNAT, and its SYN waits for an ARP answer for the VIP that never
        comes; TCP does not retransmit while that copy is queued, and the connection fails when ARP gives up.
        So: forget the tracked connection (shoal.net.conntrack), and let the queued SYN go to a MAC nobody has
        (it is dropped on the bridge; the VIP's neighbour entry is never used again, every packet to a VIP is
        DNATed now); TCP's retransmission a second later is tracked anew, DNATed to a task, and connects."""
        ns = str(box.ns)
        try:
            n = await asyncio.to_thread(conntrack.forget_unnated, ns, vips)
        except OSError as e:
            log.warning("conntrack in the namespace of task %s: %s", box.task_id, e)
            return
        if not n:
            return
        try:
            neigh = json.loads(await ipcmd.run("ip", "-j", "-4", "neigh", "show", netns=ns) or "[]")
            waiting = [e for e in neigh if e.get("dst") in vips and "REACHABLE" not in e.get("state", [])]
            await ipcmd.ip_batch([f"neigh replace {e['dst']} lladdr {NOWHERE_MAC} dev {e['dev']} nud reachable"
                                  for e in waiting], netns=ns)
        except (ipcmd.CommandFailed, ValueError) as e:
            log.debug("neighbour entries of VIPs for task %s: %s", box.task_id, e)
        log.info("task %s: %d connection(s) to VIPs from before its VIP rules retried", box.task_id, n)

    # --- routing mesh -------------------------------------------------------------------------------------

    def _published(self) -> dict[tuple[str, int], tuple[Service, int]]:
        out: dict[tuple[str, int], tuple[Service, int]] = {}
        for svc in self.state.services.values():
            for p in svc.endpoint.ports:
                if p.publish_mode == "ingress" and p.published_port and p.protocol in ("tcp", "udp"):
                    out[(p.protocol, p.published_port)] = (svc, p.target_port)
        return out

    async def _program_ingress(self) -> None:
        ingress = self.state.ingress
        want = self._published() if ingress is not None else {}
        for key, (opts, lb) in list(self._ingress.items()):
            w = want.get(key)
            if w is None or (w[0].id, w[1], *self._mesh_opts(w[0])) != opts:
                del self._ingress[key]
                await lb.close()
        if not want or ingress is None:
            await self._gc_nets()
            return
        ln = await self._ensure_net(ingress)
        src = await self._ensure_ingress_addr(ln)
        if not src:
            return  # this node has no ingress address yet: the allocator is about to give it one
        for key, (svc, target) in want.items():
            if key in self._ingress:
                continue
            proxy, local = self._mesh_opts(svc)
            if local and ln.ns is None:
                await self._ensure_host_tproxy()
            lb = self._mesh_balancer(key[0], svc.id, ingress.id, target, ln, src, proxy, local)
            try:
                await lb.start("0.0.0.0", key[1])
            except OSError as e:
                log.warning("cannot listen on %s port %d for service %s: %s", key[0], key[1], svc.name, e)
                continue
            self._ingress[key] = ((svc.id, target, proxy, local), lb)

    @staticmethod
    def _mesh_opts(svc: Service) -> tuple[bool, bool]:
        labels = svc.spec.annotations.labels
        return _truthy(labels.get(LABEL_PROXY_PROTOCOL)), _truthy(labels.get(LABEL_LOCAL_ONLY))

    def _mesh_balancer(self, proto: str, service_id: str, net_id: str, target: int, ln: _Net, src: str,
                       proxy: bool, local: bool) -> TCPBalancer | UDPBalancer:
        def backends() -> list[Backend]:
            return [Backend(e.ip, target, e.node_id) for e in self.directory.endpoints(service_id, net_id)]

        ns = str(ln.ns) if ln.ns is not None else None

        def transparent(b: Backend, client: tuple[str, int]) -> bool:
            # A loopback source cannot leave the host's lo (the kernel drops it as martian): such clients are
            # sent from the node's ingress address, like any other mesh connection.
            return local and b.node_id == self.node_id and not loopback(client[0])

        if proto == "udp":
            def udp_sock(b: Backend, client: tuple[str, int]) -> socket.socket:
                s = nsutil.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    if transparent(b, client):
                        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                        s.bind((client[0], 0))  # as for TCP: the task sees the client's address
                    else:
                        s.bind((src, 0))
                    s.connect((b.host, b.port))
                    s.setblocking(False)
                except BaseException:
                    s.close()
                    raise
                return s

            return UDPBalancer(backends, proxy_protocol=proxy, local_only=local, local_node=self.node_id,
                               sock_factory=udp_sock)

        async def connect(b: Backend, client: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            s = nsutil.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setblocking(False)
                if transparent(b, client):
                    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                    s.bind((client[0], 0))  # the task sees the client's address: no source NAT
                else:
                    s.bind((src, 0))
                await asyncio.get_running_loop().sock_connect(s, (b.host, b.port))
            except BaseException:
                s.close()
                raise
            return await asyncio.open_connection(sock=s)

        return TCPBalancer(backends, proxy_protocol=proxy, local_only=local, local_node=self.node_id,
                           keepalive=self.keepalive, connector=connect)

    # --- host-mode ports of process tasks with networks --------------------------------------------------
    # Such a task listens inside its own namespace, so the node forwards its host-mode ports to it: a
    # balancer with this one backend on the node's 0.0.0.0:<published>, connecting from inside the task's
    # namespace to its address (as docker-proxy does for a container). The task sees the connection come from
    # its own address; the service's PROXY protocol label applies as for the mesh. Containers of the docker
    # executor get the engine's port bindings instead; a task without networks binds on the node itself.

    def _host_published(self) -> dict[tuple[str, int], tuple[_Box, int, bool]]:
        out: dict[tuple[str, int], tuple[_Box, int, bool]] = {}
        for box in self._boxes.values():
            t = self.state.tasks.get(box.task_id)
            if box.container or not box.addrs or t is None or t.endpoint is None:
                continue
            svc = self.state.services.get(t.service_id)
            proxy = self._mesh_opts(svc)[0] if svc is not None else False
            for p in t.endpoint.ports:
                if p.publish_mode == "host" and p.published_port and p.protocol in ("tcp", "udp"):
                    out[(p.protocol, p.published_port)] = (box, p.target_port, proxy)
        return out

    async def _program_host_ports(self) -> None:
        want = self._host_published()
        for key, (opts, lb) in list(self._host_ports.items()):
            w = want.get(key)
            if w is None or (w[0].task_id, w[1], w[2]) != opts:
                del self._host_ports[key]
                await lb.close()
        for key, (box, target, proxy) in want.items():
            if key in self._host_ports:
                continue
            lb = self._host_balancer(key[0], box, target, proxy)
            try:
                await lb.start("0.0.0.0", key[1])
            except OSError as e:
                log.warning("cannot listen on host-mode %s port %d for task %s: %s", key[0], key[1], box.task_id, e)
                continue
            self._host_ports[key] = ((box.task_id, target, proxy), lb)

    def _host_balancer(self, proto: str, box: _Box, target: int, proxy: bool) -> TCPBalancer | UDPBalancer:
        ns, ip = str(box.ns), ip_of(box.addrs[0])
        backend = Backend(ip, target, self.node_id)
        if proto == "udp":
            def udp_sock(b: Backend, client: tuple[str, int]) -> socket.socket:
                s = nsutil.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.connect((b.host, b.port))
                    s.setblocking(False)
                except BaseException:
                    s.close()
                    raise
                return s

            return UDPBalancer(lambda: [backend], proxy_protocol=proxy, sock_factory=udp_sock)

        async def connect(b: Backend, client: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            s = nsutil.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setblocking(False)
                await asyncio.get_running_loop().sock_connect(s, (b.host, b.port))
            except BaseException:
                s.close()
                raise
            return await asyncio.open_connection(sock=s)

        return TCPBalancer(lambda: [backend], proxy_protocol=proxy, keepalive=self.keepalive, connector=connect)

    # --- docker executor ----------------------------------------------------------------------------------
    # Each overlay is a bridge network of the local engine with the overlay's subnet, gateway and range
    # (bridge `shl<token><VNI>` in the node's namespace, see host_bridge_name; the VXLAN device on it); the
    # executor connects the container with the address Shoal allocated. Its resolv.conf (bound over
    # /etc/resolv.conf) names the gateway of its first network, where this agent's DNS answers each task by its
    # source address, once its VIP rules are in the container's namespace (they go in once it runs).

    def _engine(self) -> Any:
        if self._docker is None:
            import aiodocker

            self._docker = aiodocker.Docker(url=self.engine_host)
        return self._docker

    async def _ensure_engine_net(self, net: Network, mtu: int) -> _Net:
        from aiodocker.exceptions import DockerError

        name = self._engine_network(net)
        ln = _Net(net=net, ns=None, bridge=host_bridge_name(self.node_id, net.vni), engine_name=name)
        cfg = net.ipam.configs[0]
        body = {"Name": name, "Driver": "bridge", "CheckDuplicate": True, "Internal": net.spec.internal,
                "IPAM": {"Driver": "default", "Config": [{k: v for k, v in (
                    ("Subnet", cfg.subnet), ("Gateway", ln.gateway), ("IPRange", cfg.ip_range)) if v}]},
                "Options": {"com.docker.network.bridge.name": ln.bridge, MTU_OPTION: str(mtu)},
                "Labels": {"com.shoal.network.id": net.id, "com.shoal.node.id": self.node_id}}
        docker = self._engine()
        missing = False
        try:
            found = await docker._query_json(f"networks/{name}", method="GET")
            # Made by another node of the swarm on this engine (its bridge name) or by this one earlier.
            ln.bridge = (found.get("Options") or {}).get("com.docker.network.bridge.name") or ln.bridge
        except DockerError as e:
            if e.status != 404:
                raise TemporaryError(f"engine network {name}: {e.message}") from e
            missing = True
        if missing:
            # The engine would adopt a device of that name that is there already (another engine's bridge
            # on this host): only this node's own leftover is taken.
            if await link_alias(ln.bridge) not in (None, OWNER_ALIAS + self.node_id):
                raise FatalError(f"creating network {name} for {net.name} on the engine: device {ln.bridge} "
                                 "exists and is not this node's")
            try:
                await docker._query_json("networks/create", method="POST", data=json.dumps(body))
                await ipcmd.run("ip", "link", "set", ln.bridge, "alias", OWNER_ALIAS + self.node_id, check=False)
            except DockerError as e2:
                if e2.status == 409:
                    # Made meanwhile by another node on this engine: the same overlay, the same network.
                    try:
                        found = await docker._query_json(f"networks/{name}", method="GET")
                    except DockerError as e3:
                        raise TemporaryError(f"engine network {name}: {e3.message}") from e3
                    ln.bridge = (found.get("Options") or {}).get("com.docker.network.bridge.name") or ln.bridge
                elif 400 <= e2.status < 500:
                    # The engine refuses it (a subnet that overlaps one of its networks, say): no retry helps
                    # on this node, so the task is rejected with the engine's error and placed again.
                    raise FatalError(f"creating network {name} for {net.name} on the engine: {e2.message}") \
                        from None
                else:
                    raise TemporaryError(f"creating engine network {name}: {e2.message}") from e2
        dns = DNSServer(self.directory, [], upstreams=self.upstreams, view=self._view_of, hold=self._rules_ready)
        udp = nsutil.socket_in(None, socket.AF_INET, socket.SOCK_DGRAM)
        tcp = nsutil.socket_in(None, socket.AF_INET, socket.SOCK_STREAM)
        try:
            await dns.start_on(udp, tcp, (ln.gateway, 53))
            self._gw_dns[net.id] = dns
        except OSError as e:
            udp.close()
            tcp.close()
            log.warning("no DNS on %s:53 for network %s: %s", ln.gateway, net.name, e)
        return ln

    async def _drop_engine_net(self, ln: _Net) -> None:
        from aiodocker.exceptions import DockerError

        dns = self._gw_dns.pop(ln.net.id, None)
        if dns is not None:
            await dns.close()
        await delete_owned_link(self._vxlan_name(ln), self.node_id)
        try:
            async with self._engine()._query(f"networks/{ln.engine_name}", method="DELETE"):
                pass
        except DockerError as e:
            log.info("removing engine network %s: %s", ln.engine_name, e.message)

    async def _ensure_host_tproxy(self) -> None:
        """Local-only for containers: the mesh connects to a container from the client's own address through a
        transparent socket in the node's namespace, and the container's replies reach the node through its
        default route (the gateway of one of its bridges). Marked when they belong to such a socket, they are
        routed locally, to it, instead of forwarded towards the client (the TPROXY recipe, limited to packets
        coming in from Shoal's bridges). Idempotent: several nodes on one host write the same rules."""
        if self._host_tproxy:
            return
        await ipcmd.nft("add table ip shoal_mesh\nflush table ip shoal_mesh\ntable ip shoal_mesh {\n"
                        "  chain pre {\n    type filter hook prerouting priority mangle; policy accept;\n"
                        f'    iifname "shl*" socket transparent 1 meta mark set {HOST_TPROXY_MARK:#x}\n'
                        "  }\n}\n")
        if not (await ipcmd.run("ip", "rule", "show", "priority", str(HOST_TPROXY_TABLE))).strip():
            await ipcmd.run("ip", "rule", "add", "fwmark", f"{HOST_TPROXY_MARK:#x}", "lookup", str(HOST_TPROXY_TABLE),
                            "priority", str(HOST_TPROXY_TABLE))
        await ipcmd.run("ip", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(HOST_TPROXY_TABLE))
        self._host_tproxy = True

    async def _rules_ready(self, client: str) -> None:
        """Until the asking container's VIP rules are in. The engine starts a container's process before they
        can be written; a name answered before would let it connect to a VIP undiverted, and such a connection
        fails once ARP for the VIP gives up (3 s), unless the rules came in time to have it retried
        (`_retry_early_vip_connections`). Held here, the answer comes once every VIP it may name is DNATed."""
        box = self._by_ip.get(client)
        if box is None or not box.container or box.rules_in.is_set():
            return
        try:
            await asyncio.wait_for(box.rules_in.wait(), RULES_WAIT)
        except TimeoutError:
            log.info("task %s: its VIP rules are not in after %.0f s; DNS answered anyway", box.task_id, RULES_WAIT)

    def _view_of(self, client: str) -> list[str]:
        box = self._by_ip.get(client)
        if box is None:
            return []
        return [n for n in box.networks if (net := self.state.networks.get(n)) is not None and not net.spec.ingress]

    async def attach_container(self, task: Task) -> ContainerNetworks | None:
        """Engine networks for the task's overlays (made when missing) and how to connect its container."""
        if not task.networks:
            return None
        nets = [await self._known_network(a.network_id) for a in task.networks]
        async with self._lock:
            eps: list[tuple[str, str, tuple[str, ...]]] = []
            dns_ip = ""
            for att, net in zip(task.networks, nets, strict=True):
                try:
                    ln = await self._ensure_net(net)
                except FatalError as e:  # the task is rejected with it: one line here, no traceback anywhere
                    log.warning("task %s cannot attach to network %s: %s", task.id, net.name, e.message)
                    raise
                if not att.addresses:
                    raise TemporaryError(f"task {task.id} has no address on network {net.name}")
                eps.append((ln.engine_name, ip_of(att.addresses[0]), ()))
                if not dns_ip and not net.spec.ingress:
                    dns_ip = ln.gateway
            resolv = self._resolv(task.id)
            resolv.write_text(f"nameserver {dns_ip or DNS_ADDR}\noptions ndots:0\n")
            box = _Box(task.id, NO_NS, [n.id for n in nets], list(eps[i][1] for i in range(len(eps))),
                       container=True)
            self._boxes.setdefault(task.id, box)
            for ip in box.addrs:
                self._by_ip[ip] = self._boxes[task.id]
            return ContainerNetworks(endpoints=tuple(eps), resolv_conf=str(resolv))

    async def container_started(self, task: Task, pid: int,
                                still_running: Callable[[], Awaitable[bool]] | None = None) -> None:
        """The container runs (`pid`, as the engine reported it): hold its namespace, then its VIP rules in it.
        `still_running` asks the engine again whether `pid` is the container's process (see `hold_netns`)."""
        if not task.networks or pid <= 0:
            return
        async with self._lock:
            box = self._boxes.get(task.id)
            if box is None:
                box = _Box(task.id, NO_NS, [a.network_id for a in task.networks],
                           [ip_of(a.addresses[0]) for a in task.networks if a.addresses], container=True)
                self._boxes[task.id] = box
                for ip in box.addrs:
                    self._by_ip[ip] = box
                for nid in box.networks:
                    net = self.state.networks.get(nid)
                    if net is not None:
                        await self._ensure_net(net)
            if box.seen and task.id not in self.state.tasks:
                return  # ended meanwhile
            if (box.pid == pid and ipcmd.is_netns(box.ns)) or await self.hold_netns(box, pid, still_running):
                await self._program_vips(box)

    async def container_stopped(self, task_id: str) -> None:
        """The task's container exited: let its namespace go (a task's container never starts again)."""
        async with self._lock:
            box = self._boxes.get(task_id)
            if box is not None and box.container:
                await self._release_netns(box)
                box.rules_in.set()

    def _handle(self, key: str) -> Path:
        return self.ns_dir / f"c-{key}"

    async def hold_netns(self, box: _Box, pid: int, still_running: Callable[[], Awaitable[bool]] | None) -> bool:
        """Hold the namespace of the container `box` stands for by a handle of our own: the one of process
        `pid`, if after opening it (with a pidfd) `still_running()` says `pid` is the container's and the
        pidfd's process has not been reaped since (so it is that process). A former handle is let go first.
        False (nothing held, nothing programmed) when the process is gone or not the container's."""
        await self._release_netns(box)
        handle = self._handle(box.task_id)
        try:
            pidfd, nsfd = nsutil.open_netns_of(pid)
        except OSError as e:
            log.info("sandbox %s: process %d is gone (%s); no VIP rules", box.task_id, pid, e.strerror)
            return False
        try:
            if still_running is not None and not await still_running():
                log.info("sandbox %s: process %d is no longer the container's; no VIP rules", box.task_id, pid)
                return False
            if not nsutil.alive(pidfd):
                log.info("sandbox %s: process %d ended; no VIP rules", box.task_id, pid)
                return False
            handle.touch(exist_ok=True)
            nsutil.bind_fd(nsfd, str(handle))
        except OSError as e:
            handle.unlink(missing_ok=True)
            log.warning("sandbox %s: cannot hold the namespace of process %d: %s", box.task_id, pid, e)
            return False
        finally:
            os.close(nsfd)
            os.close(pidfd)
        box.ns, box.nft_script, box.pid = handle, "", pid
        return True

    async def _release_netns(self, box: _Box) -> None:
        """Let go of a container's namespace handle (the kernel frees the namespace once nothing else holds
        it); its rules are written again if it is held anew."""
        await ipcmd.delete_netns(self._handle(box.task_id))
        box.ns, box.nft_script, box.pid = NO_NS, "", 0
