"""The docker executor's side of the network agent: each overlay is a bridge network of the local engine.

The engine network (`shoal-<network id>`) has the overlay's subnet, gateway and range, its bridge `shl<token>
<VNI>` in the node's namespace (see shoal.net.links.host_bridge_name; the VXLAN device on it), and is labelled
with the Shoal node; the executor connects the container with the address Shoal allocated. Its resolv.conf
(bound over /etc/resolv.conf) names the gateway of its first network, where a DNS server of this agent answers
each task by its source address, once its VIP rules are in the container's namespace (they go in once it
runs; shoal.net.containers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import TYPE_CHECKING

from shoal.errors import FatalError, TemporaryError
from shoal.host import ipcmd, nsutil
from shoal.model.objects import Network
from shoal.net.dns import DNSServer
from shoal.net.links import MTU_OPTION, OWNER_ALIAS, delete_owned_link, host_vxlan_name, link_alias
from shoal.net.shared import Shared

if TYPE_CHECKING:
    import aiodocker

log = logging.getLogger(__name__)

# Docker executor, local-only mesh: replies from containers to a transparent socket in the node's own
# namespace carry this mark and are routed by this table, to the socket (only packets from Shoal's bridges).
HOST_TPROXY_MARK = 0x5B01
HOST_TPROXY_TABLE = 23297
RULES_WAIT = 8.0  # seconds at most a container's DNS answer waits for its VIP rules (a resolver tries twice 5 s)


def engine_network_name(net: Network) -> str:
    """The engine network standing for `net` on a node."""
    return f"shoal-{net.id[:12]}"


class EngineBridges:
    """The engine's bridge networks for this node's overlays, their gateway DNS, and the host-wide rules of the
    local-only mesh."""

    def __init__(self, shared: Shared, engine_host: str) -> None:
        self.shared = shared
        self.engine_host = engine_host
        self._docker: aiodocker.Docker | None = None
        self._gw_dns: dict[str, DNSServer] = {}  # network id -> DNS on its gateway
        self._host_tproxy = False  # the node-namespace mark rule and route of local-only are in

    def client(self) -> aiodocker.Docker:
        """The engine's aiodocker client (made on first use)."""
        if self._docker is None:
            import aiodocker

            self._docker = aiodocker.Docker(url=self.engine_host)
        return self._docker

    async def close(self) -> None:
        """Stop the gateway DNS servers and the client; the engine's networks stay."""
        for dns in self._gw_dns.values():
            await dns.close()
        self._gw_dns.clear()
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def ensure(self, net: Network, bridge: str, gateway: str, mtu: int) -> str:
        """The engine network for `net` (made when missing, on bridge `bridge`) and DNS on its gateway; the
        name of its bridge (another node of the swarm on this engine may have made it under its own)."""
        from aiodocker.exceptions import DockerError

        node_id = self.shared.node_id
        name = engine_network_name(net)
        cfg = net.ipam.configs[0]
        body = {"Name": name, "Driver": "bridge", "CheckDuplicate": True, "Internal": net.spec.internal,
                "IPAM": {"Driver": "default", "Config": [{k: v for k, v in (
                    ("Subnet", cfg.subnet), ("Gateway", gateway), ("IPRange", cfg.ip_range)) if v}]},
                "Options": {"com.docker.network.bridge.name": bridge, MTU_OPTION: str(mtu)},
                "Labels": {"com.shoal.network.id": net.id, "com.shoal.node.id": node_id}}
        docker = self.client()
        missing = False
        try:
            found = await docker._query_json(f"networks/{name}", method="GET")
            # Made by another node of the swarm on this engine (its bridge name) or by this one earlier.
            bridge = (found.get("Options") or {}).get("com.docker.network.bridge.name") or bridge
        except DockerError as e:
            if e.status != 404:
                raise TemporaryError(f"engine network {name}: {e.message}") from e
            missing = True
        if missing:
            # The engine would adopt a device of that name that is there already (another engine's bridge
            # on this host): only this node's own leftover is taken.
            if await link_alias(bridge) not in (None, OWNER_ALIAS + node_id):
                raise FatalError(f"creating network {name} for {net.name} on the engine: device {bridge} "
                                 "exists and is not this node's")
            try:
                await docker._query_json("networks/create", method="POST", data=json.dumps(body))
                await ipcmd.run("ip", "link", "set", bridge, "alias", OWNER_ALIAS + node_id, check=False)
            except DockerError as e2:
                if e2.status == 409:
                    # Made meanwhile by another node on this engine: the same overlay, the same network.
                    try:
                        found = await docker._query_json(f"networks/{name}", method="GET")
                    except DockerError as e3:
                        raise TemporaryError(f"engine network {name}: {e3.message}") from e3
                    bridge = (found.get("Options") or {}).get("com.docker.network.bridge.name") or bridge
                elif 400 <= e2.status < 500:
                    # The engine refuses it (a subnet that overlaps one of its networks, say): no retry helps
                    # on this node, so the task is rejected with the engine's error and placed again.
                    raise FatalError(f"creating network {name} for {net.name} on the engine: {e2.message}") \
                        from None
                else:
                    raise TemporaryError(f"creating engine network {name}: {e2.message}") from e2
        dns = DNSServer(self.shared.directory, [], upstreams=self.shared.upstreams, view=self._view_of,
                        hold=self._rules_ready)
        udp = nsutil.socket_in(None, socket.AF_INET, socket.SOCK_DGRAM)
        tcp = nsutil.socket_in(None, socket.AF_INET, socket.SOCK_STREAM)
        try:
            await dns.start_on(udp, tcp, (gateway, 53))
            self._gw_dns[net.id] = dns
        except OSError as e:
            udp.close()
            tcp.close()
            log.warning("no DNS on %s:53 for network %s: %s", gateway, net.name, e)
        return bridge

    async def collect_leftovers(self, keep: set[str], known: dict[str, Network]) -> None:
        """After a restart: the engine networks this node made before (labelled with its ID) for a network id
        not in `keep` go, with their VXLAN device, when nothing is connected to them (a daemon killed while it
        held them left them; one still needed is made again when used)."""
        from aiodocker.exceptions import DockerError

        node_id = self.shared.node_id
        docker = self.client()
        try:
            found = await docker._query_json("networks", params={"filters": json.dumps(
                {"label": [f"com.shoal.node.id={node_id}"]})})
        except (DockerError, OSError) as e:
            log.warning("listing this node's engine networks: %s", e)
            return
        for n in found:
            nid = str((n.get("Labels") or {}).get("com.shoal.network.id", ""))
            if not nid or nid in keep:
                continue
            try:
                full = await docker._query_json(f"networks/{n['Id']}")
                if full.get("Containers"):
                    continue  # a task's container still on it: its own stop collects the network later
                async with docker._query(f"networks/{n['Id']}", method="DELETE"):
                    pass
            except DockerError as e:
                log.info("removing engine network %s left by an earlier run: %s", n.get("Name"), e.message)
                continue
            net = known.get(nid)
            if net is not None:
                await delete_owned_link(host_vxlan_name(node_id, net.vni), node_id)
            log.info("removed engine network %s, left by an earlier run of this node", n.get("Name"))

    async def drop(self, net: Network) -> None:
        """The network's gateway DNS, VXLAN device and engine network go."""
        from aiodocker.exceptions import DockerError

        dns = self._gw_dns.pop(net.id, None)
        if dns is not None:
            await dns.close()
        await delete_owned_link(host_vxlan_name(self.shared.node_id, net.vni), self.shared.node_id)
        name = engine_network_name(net)
        try:
            async with self.client()._query(f"networks/{name}", method="DELETE"):
                pass
        except DockerError as e:
            log.info("removing engine network %s: %s", name, e.message)

    async def ensure_host_tproxy(self) -> None:
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
        (`VipRules.retry_early_connections`). Held here, the answer comes once every VIP it may name is
        DNATed."""
        box = self.shared.by_ip.get(client)
        if box is None or not box.container or box.rules_in.is_set():
            return
        try:
            await asyncio.wait_for(box.rules_in.wait(), RULES_WAIT)
        except TimeoutError:
            log.info("task %s: its VIP rules are not in after %.0f s; DNS answered anyway", box.task_id, RULES_WAIT)

    def _view_of(self, client: str) -> list[str]:
        box = self.shared.by_ip.get(client)
        if box is None:
            return []
        networks = self.shared.state.networks
        return [n for n in box.networks if (net := networks.get(n)) is not None and not net.spec.ingress]
