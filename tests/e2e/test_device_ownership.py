"""Host-namespace devices of the docker executor belong to one node (issue 15, "a node only touches what is its
own"): two nodes of different swarms on one host, each with an overlay of the same VNI (VNIs are allocated from
4096 up in every swarm), get bridges and VXLAN devices of their own; neither deletes or adopts the other's, and
the cleanup of leaving (shoal.net.setup.remove_network_state) removes only the leaving node's.

The network agents are the real ones (separate data directories, node IDs and data path ports, as two swarms
on one host have): one on the test run's dockerd, the other on a second private dockerd (one engine adopts a
bridge of the name it is told that another made), both in this host namespace; their VXLAN devices are made
on this host's own address and no peer is programmed, so nothing is ever sent.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import docker
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

VNI = 0x3A000 + secrets.randbelow(0x1000)  # the same in both swarms; away from what other tests allocate


def _links() -> dict[str, dict[str, Any]]:
    out = subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {ln["ifname"]: ln for ln in json.loads(out)}


def _foreign_bridge(name: str) -> None:
    """A device that is no node's (no mark), as another engine's bridge would be."""
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)


def _delete_links(*names: str) -> None:
    for name in names:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def _host_addr() -> str:
    """This host's own address on its default route's device (VXLAN devices need a non-loopback one)."""
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "default"], capture_output=True, text=True).stdout
    for r in json.loads(out or "[]"):
        if r.get("prefsrc"):
            return str(r["prefsrc"])
        addrs = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", r["dev"]], capture_output=True,
                               text=True).stdout
        for ifc in json.loads(addrs or "[]"):
            for a in ifc.get("addr_info", []):
                return str(a["local"])
    pytest.skip("no non-loopback IPv4 address on this host")


def _free_udp_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def _swarm(tag: str, subnet: str, addr: str, port: int) -> tuple[str, Any, Any]:
    """A node ID, the snapshot of its swarm (one overlay with VNI, this node at `addr`) and its task on it."""
    from shoal.net.state import NetState, NodeAddrs
    from tests.support.netobjects import network, task

    node_id = f"node{tag}{secrets.token_hex(8)}"
    net = network(f"net{tag}{secrets.token_hex(10)}", subnet, name="appnet", vni=VNI)
    prefix = subnet.rsplit(".", 1)[0]
    own = task(f"task{tag}{secrets.token_hex(8)}", net=net.id, addr=f"{prefix}.3/24", slot=0, node_id=node_id)
    state = NetState(version=1, networks={net.id: net}, tasks={own.id: own},
                     nodes={node_id: NodeAddrs(addr, "")}, data_path_port=port)
    return node_id, state, own


async def _scenario(dockerd: str, dockerd2: str, base: Path) -> None:
    from shoal.errors import FatalError
    from shoal.net.agent import NetworkAgent
    from shoal.net.links import OWNER_ALIAS, host_bridge_name, host_vxlan_name
    from shoal.net.setup import remove_network_state
    from tests.support.netobjects import SnapshotFeed

    addr = _host_addr()
    a_id, a_state, a_task = _swarm("a", "10.219.71.0/24", addr, _free_udp_port(addr))
    b_id, b_state, b_task = _swarm("b", "10.219.72.0/24", addr, _free_udp_port(addr))
    a = NetworkAgent(a_id, addr, base / "a" / "net", SnapshotFeed(a_state), engine_host=dockerd)
    b = NetworkAgent(b_id, addr, base / "b" / "net", SnapshotFeed(b_state), engine_host=dockerd2)
    agents = [a, b]
    a_br, a_vx = host_bridge_name(a_id, VNI), host_vxlan_name(a_id, VNI)
    b_br, b_vx = host_bridge_name(b_id, VNI), host_vxlan_name(b_id, VNI)
    assert len({a_br, a_vx, b_br, b_vx}) == 4 and all(len(x) <= 15 for x in (a_br, a_vx, b_br, b_vx))
    try:
        await a.start()
        await a.synced(1)
        await a.attach_container(a_task)
        before = _links()
        assert before[a_vx]["linkinfo"]["info_kind"] == "vxlan" and before[a_vx].get("master") == a_br, before.get(a_vx)
        assert before[a_vx]["ifalias"] == before[a_br]["ifalias"] == OWNER_ALIAS + a_id

        # The other swarm's node makes the same VNI: devices of its own, a's untouched (same devices, same bridge).
        await b.start()
        await b.synced(1)
        await b.attach_container(b_task)
        now = _links()
        assert now[b_vx].get("master") == b_br and now[b_vx]["ifalias"] == OWNER_ALIAS + b_id, now.get(b_vx)
        for dev in (a_br, a_vx):
            assert now[dev]["ifindex"] == before[dev]["ifindex"], f"{dev} was replaced"
        assert now[a_vx].get("master") == a_br

        # b leaves: its engine network, bridge and VXLAN device go; a's stay.
        await b.close()
        await remove_network_state(base / "b" / "net", b_id, dockerd2)
        now = _links()
        assert b_br not in now and b_vx not in now, sorted(now)
        assert now[a_vx]["ifindex"] == before[a_vx]["ifindex"] and now[a_vx].get("master") == a_br
        assert now[a_br]["ifindex"] == before[a_br]["ifindex"]

        # Devices of a's names that a did not make (in the way, as a restarted agent may find them): neither
        # deleted nor adopted. A VXLAN name taken: the overlay goes without tunnel; a bridge name: refused.
        await a.close()
        await remove_network_state(base / "a" / "net", a_id, dockerd)
        assert a_br not in _links() and a_vx not in _links()
        _foreign_bridge(a_vx)
        foreign = _links()[a_vx]
        a = agents[0] = NetworkAgent(a_id, addr, base / "a2" / "net", SnapshotFeed(a_state), engine_host=dockerd)
        await a.start()
        await a.synced(1)
        await a.attach_container(a_task)
        await a.close()
        await remove_network_state(base / "a2" / "net", a_id, dockerd)
        now = _links()
        assert now[a_vx]["ifindex"] == foreign["ifindex"] and a_br not in now
        _foreign_bridge(a_br)
        foreign = _links()[a_br]
        a = agents[0] = NetworkAgent(a_id, addr, base / "a3" / "net", SnapshotFeed(a_state), engine_host=dockerd)
        await a.start()
        await a.synced(1)
        with pytest.raises(FatalError, match="is not this node's"):
            await a.attach_container(a_task)
        await a.close()
        await remove_network_state(base / "a3" / "net", a_id, dockerd)
        assert _links()[a_br]["ifindex"] == foreign["ifindex"]
    finally:
        for agent in agents:
            await agent.close()
        _delete_links(a_br, a_vx, b_br, b_vx)


def test_two_swarms_on_one_host_keep_to_their_own_devices(dockerd: str) -> None:
    from tests.e2e.dockerd import start_dockerd, stop_dockerd

    base = Path(tempfile.mkdtemp(prefix="own", dir="/tmp"))
    # A short path: unix socket paths are limited to 107 bytes.
    other = start_dockerd(Path(f"/run/shoal-own-{secrets.token_hex(4)}"), data_root=base / "engine2")
    try:
        asyncio.run(_scenario(dockerd, other.url, base))
    finally:
        for url in (dockerd, other.url):
            engine = docker.DockerClient(base_url=url, timeout=60)
            try:
                for net in engine.api.networks(filters={"label": "com.shoal.network.id"}):
                    if net["Labels"].get("com.shoal.node.id", "").startswith(("nodea", "nodeb")):
                        engine.api.remove_network(net["Id"])
            finally:
                engine.close()
        stop_dockerd(other)
        shutil.rmtree(base, ignore_errors=True)
