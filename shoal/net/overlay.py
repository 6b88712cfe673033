"""Overlay networks on one node.

Each network with a sandbox on this node gets a network namespace of its own (`<root>/ns/n-<network id>`)
holding a bridge `br0` with the gateway address and a VXLAN device (VNI = the network's, UDP port = the
cluster's data path port, `nolearning proxy`); with the docker executor the network is a bridge of the engine
instead (shoal.net.engine), in the node's namespace. The VXLAN device is created in the node's namespace (its
UDP socket stays on the underlay) under a name only this node uses, marked as its own (ifalias `shoal-node:<node
ID>`), then moved into the network namespace and named `vx<VNI>` there. Remote endpoints are programmed, not
learned: for every address of a task on another node (and every other node's ingress address), a permanent
neighbour entry IP -> MAC (the VXLAN device answers ARP from them: `proxy`) and a forwarding entry MAC -> that
node's underlay address. MACs are derived from IPs (shoal.net.links.mac_of), so no node has to tell another
its MACs. No VXLAN device on a node whose address is loopback: such nodes share one machine and cannot tunnel
to each other.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

from shoal.errors import TemporaryError
from shoal.host import ipcmd
from shoal.model.objects import Network
from shoal.net.engine import EngineBridges, engine_network_name
from shoal.net.links import (
    OWNER_ALIAS,
    delete_owned_link,
    host_bridge_name,
    host_vxlan_name,
    ip_of,
    loopback,
    mac_of,
    network_mtu,
)
from shoal.net.shared import Shared

log = logging.getLogger(__name__)


@dataclass
class LocalNet:
    """An overlay as this node has it: its bridge (in a namespace of its own, or the engine's), its VXLAN
    device and the remote endpoints programmed on it."""

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


class Overlays:
    """This node's overlays (made on first use, under the shared lock) and their VXLAN entries."""

    def __init__(self, shared: Shared, engine: EngineBridges | None) -> None:
        self.shared = shared
        self.engine = engine  # docker executor: overlays are bridge networks of that engine
        self.nets: dict[str, LocalNet] = {}
        # Every overlay this run of the daemon made or took over on the engine: an engine network labelled with
        # this node that is not among them was left by an earlier run (see NetworkAgent's leftover collection).
        self.claimed: set[str] = set()

    def vxlan_name(self, ln: LocalNet) -> str:
        """In a namespace of the node's own `vx<VNI>`; in the host namespace a name only this node uses."""
        return f"vx{ln.net.vni}" if ln.ns is not None else host_vxlan_name(self.shared.node_id, ln.net.vni)

    def _net_ns(self, net_id: str) -> Path:
        return self.shared.ns_dir / f"n-{net_id[:20]}"

    async def update(self) -> None:
        """Every overlay's definition and remote endpoints as the shared cluster state has them."""
        for nid, ln in list(self.nets.items()):
            net = self.shared.state.networks.get(nid)
            if net is not None:
                ln.net = net
            await self._program_peers(ln)

    async def ensure(self, net: Network) -> LocalNet:
        """The overlay `net` on this node, made when missing."""
        ln = self.nets.get(net.id)
        if ln is not None:
            return ln
        if not net.ipam.configs or not net.ipam.configs[0].subnet:
            raise TemporaryError(f"network {net.name} has no subnet allocated yet")
        mtu = network_mtu(net)
        if self.engine is not None:
            self.claimed.add(net.id)
            ln = LocalNet(net=net, ns=None, bridge=host_bridge_name(self.shared.node_id, net.vni),
                          engine_name=engine_network_name(net))
            ln.bridge = await self.engine.ensure(net, ln.bridge, ln.gateway, mtu)
            await self._ensure_vxlan(ln, mtu)
            self.nets[net.id] = ln
            await self._program_peers(ln)
            return ln
        ln = LocalNet(net=net, ns=self._net_ns(net.id))
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
        self.nets[net.id] = ln
        await self._program_peers(ln)
        return ln

    async def gc(self, keep: set[str]) -> None:
        """Every overlay not in `keep` goes (its namespace, or its engine network)."""
        for nid, ln in list(self.nets.items()):
            if nid in keep:
                continue
            del self.nets[nid]
            if ln.ns is not None:
                await ipcmd.delete_netns(ln.ns)
            elif self.engine is not None:
                await self.engine.drop(ln.net)

    async def _ensure_vxlan(self, ln: LocalNet, mtu: int) -> None:
        node_id, addr = self.shared.node_id, self.shared.addr
        if loopback(addr):
            return
        dev = self.vxlan_name(ln)
        ns = str(ln.ns) if ln.ns is not None else None
        # Adopted: start from no entries. In the host namespace only a device marked as this node's goes.
        if ns is not None:
            await ipcmd.run("ip", "link", "del", dev, netns=ns, check=False)
        else:
            await delete_owned_link(dev, node_id)
        # Made in the host namespace (its UDP socket stays on the underlay) under a name only this node uses,
        # marked as this node's at once; renamed once in a namespace of its own.
        made = host_vxlan_name(node_id, ln.net.vni)
        added = False
        try:
            await ipcmd.run("ip", "link", "add", made, "type", "vxlan", "id", str(ln.net.vni), "dstport",
                            str(self.shared.state.data_path_port), "local", addr, "nolearning", "proxy")
            added = True
            await ipcmd.run("ip", "link", "set", made, "alias", OWNER_ALIAS + node_id)
            if ns is not None:
                await ipcmd.run("ip", "link", "set", made, "netns", ns)
                await ipcmd.run("ip", "link", "set", made, "name", dev, netns=ns)
        except ipcmd.CommandFailed as e:
            if added:
                await delete_owned_link(made, node_id)
                if ns is not None:
                    await ipcmd.run("ip", "link", "del", made, netns=ns, check=False)
            log.warning("no VXLAN device for network %s (tasks on other nodes unreachable): %s", ln.net.name,
                        e.message)
            return
        await ipcmd.ip_batch([f"link set {dev} mtu {mtu}", f"link set {dev} master {ln.bridge}",
                              f"link set {dev} up"], netns=ns)
        ln.vxlan = True
        ln.peers = {}

    def _remote_endpoints(self, net_id: str) -> dict[str, tuple[str, str]]:
        """ip -> (mac, vtep) of everything on `net_id` that lives on another node."""
        out: dict[str, tuple[str, str]] = {}
        node_id, st = self.shared.node_id, self.shared.state
        for t in st.tasks.values():
            if t.node_id == node_id:
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
                if nid != node_id and node.ingress and not loopback(node.addr):
                    ip = ip_of(node.ingress)
                    out[ip] = (mac_of(ip), node.addr)
        return out

    async def _program_peers(self, ln: LocalNet) -> None:
        if not ln.vxlan:
            return
        want = self._remote_endpoints(ln.net.id)
        dev = self.vxlan_name(ln)
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

    async def ensure_ingress_addr(self, ln: LocalNet) -> str:
        """This node's own ingress address on the ingress bridge (and the bridge's MAC derived from it, which
        is what other nodes programmed for it)."""
        me = self.shared.state.nodes.get(self.shared.node_id)
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
