"""Devices and addresses of a node's networks: the names and ownership marks of its devices in the host
namespace, MACs derived from addresses, MTUs.

Devices a node makes in the host namespace (the docker executor's bridges, every VXLAN device until it moves)
are named with a token of the node's ID and marked as its own (ifalias `shoal-node:<node ID>`); a device of
such a name that is not marked so is neither adopted nor deleted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json

from shoal.host import ipcmd
from shoal.model.objects import Network

DEFAULT_MTU = 1450
MTU_OPTION = "com.docker.network.driver.mtu"
OWNER_ALIAS = "shoal-node:"  # + node ID: the ifalias marking a host-namespace device as this node's


def node_token(node_id: str) -> str:
    """Six base36 characters of the node ID's hash, in the names of the node's devices in the host namespace:
    nodes sharing a host (other swarms, other engines) never pick each other's names."""
    n = int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:8], "big")
    out = ""
    for _ in range(6):
        n, r = divmod(n, 36)
        out += "0123456789abcdefghijklmnopqrstuvwxyz"[r]
    return out


def host_bridge_name(node_id: str, vni: int) -> str:
    """The engine bridge for an overlay (docker executor): `shl`, the node's token, the VNI in hex (at most
    3 + 6 + 6 = 15 characters, Linux's limit)."""
    return f"shl{node_token(node_id)}{vni:x}"


def host_vxlan_name(node_id: str, vni: int) -> str:
    """A VXLAN device's name while it is in the host namespace (for good with the docker executor)."""
    return f"vx{node_token(node_id)}{vni:x}"


async def link_alias(dev: str, netns: str | None = None) -> str | None:
    """The ifalias of `dev` ("" when it has none); None when there is no such device."""
    out = await ipcmd.run("ip", "-j", "link", "show", "dev", dev, netns=netns, check=False)
    try:
        links = json.loads(out or "[]")
    except ValueError:
        return None
    return str(links[0].get("ifalias", "")) if links else None


async def delete_owned_link(dev: str, node_id: str, netns: str | None = None) -> bool:
    """Delete `dev` if it is marked as `node_id`'s; a device of anyone else (or unmarked) stays. Deleted?"""
    if await link_alias(dev, netns) != OWNER_ALIAS + node_id:
        return False
    await ipcmd.run("ip", "link", "del", dev, netns=netns, check=False)
    return True


async def owned_links(node_id: str, kind: str) -> list[str]:
    """The names of the host namespace's devices of type `kind` marked as `node_id`'s."""
    out = await ipcmd.run("ip", "-j", "link", "show", "type", kind, check=False)
    try:
        links = json.loads(out or "[]")
    except ValueError:
        return []
    return [str(ln["ifname"]) for ln in links if ln.get("ifalias") == OWNER_ALIAS + node_id]


def mac_of(ip: str) -> str:
    """libnetwork's GenerateMACFromIP: 02:42 and the IPv4 address's four bytes."""
    b = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{x:02x}" for x in b)


def ip_of(cidr: str) -> str:
    """The address of an `a.b.c.d/n` (or of a bare address)."""
    return str(ipaddress.ip_interface(cidr).ip)


def network_mtu(net: Network) -> int:
    """The network's `com.docker.network.driver.mtu` option, else 1450 (1500 less the VXLAN overhead)."""
    raw = net.spec.driver.options.get(MTU_OPTION, "")
    try:
        return int(raw) if raw else DEFAULT_MTU
    except ValueError:
        return DEFAULT_MTU


def loopback(addr: str) -> bool:
    """Is `addr` a loopback address (or none, or not an address)? Nodes on one such share a machine and
    cannot tunnel to each other."""
    try:
        return not addr or ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return True
