"""A node's network agent and the host: whether this host can do networking, its DNS upstreams, and what
leaving the swarm removes (`remove_network_state`). The node starts the agent (shoal.node.network)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from shoal.host import ipcmd
from shoal.net.engine import HOST_TPROXY_TABLE
from shoal.net.kingress import remove_host_rules
from shoal.net.links import delete_owned_link, owned_links

log = logging.getLogger(__name__)

TOOLS = ("ip", "bridge", "nsenter", "unshare", "nft")


def why_no_networking() -> str | None:
    """Why this host cannot attach tasks to networks (None: it can)."""
    if os.geteuid() != 0:
        return "not running as root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    return None


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    out: list[str] = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    out.append(parts[1])
    except OSError:
        pass
    return out


async def remove_network_state(root: Path, node_id: str = "", engine_host: str | None = None) -> None:
    """After leaving the swarm: every namespace this node made goes, every engine network (tasks are already
    removed) and every VXLAN device in the host namespace marked as this node's; nothing of another node."""
    if engine_host and node_id:
        await remove_engine_networks(engine_host, node_id)
    if node_id and why_no_networking() is None:
        for dev in await owned_links(node_id, "vxlan"):
            await delete_owned_link(dev, node_id)
        await remove_host_rules(node_id)
    if engine_host and node_id:
        await remove_host_tproxy()
    ns_dir = root / "ns"
    if ns_dir.is_dir():
        for p in sorted(ns_dir.iterdir()):
            if p.suffix == "":
                await ipcmd.delete_netns(p)
    shutil.rmtree(root, ignore_errors=True)


async def remove_host_tproxy() -> None:
    """The host-wide local-only mesh rules (shoal.net.engine.EngineBridges.ensure_host_tproxy), once no Shoal
    bridge is left on this host: every docker-executor node on it shares them, so the last one to leave removes
    them."""
    links = await ipcmd.run("ip", "-o", "link", "show", check=False)
    if any(line.split(": ")[1].split("@")[0].startswith("shl") for line in links.splitlines() if ": " in line):
        return
    await ipcmd.run("nft", "delete", "table", "ip", "shoal_mesh", check=False)
    await ipcmd.run("ip", "rule", "del", "priority", str(HOST_TPROXY_TABLE), check=False)
    await ipcmd.run("ip", "route", "flush", "table", str(HOST_TPROXY_TABLE), check=False)


async def remove_engine_networks(engine_host: str, node_id: str) -> None:
    """The engine's bridge networks that stood for this node's overlays (those labelled with its ID; their
    bridges go with them). Its VXLAN devices are found by their mark (`remove_network_state`)."""
    import json

    import aiodocker
    from aiodocker.exceptions import DockerError

    docker = aiodocker.Docker(url=engine_host)
    try:
        found = await docker._query_json("networks", params={"filters": json.dumps(
            {"label": [f"com.shoal.node.id={node_id}"]})})
        for n in found:
            # Plain containers still on it (attachable networks; tasks are gone by now) lose it, as in dockerd.
            try:
                full = await docker._query_json(f"networks/{n['Id']}")
                for cid in full.get("Containers") or {}:
                    async with docker._query(f"networks/{n['Id']}/disconnect", method="POST",
                                             data=json.dumps({"Container": cid, "Force": True})):
                        pass
            except DockerError as e:
                log.warning("disconnecting containers from engine network %s: %s", n.get("Name"), e.message)
            try:
                async with docker._query(f"networks/{n['Id']}", method="DELETE"):
                    pass
            except DockerError as e:
                log.warning("removing engine network %s: %s", n.get("Name"), e.message)
    except (DockerError, OSError) as e:
        log.warning("listing engine networks: %s", e)
    finally:
        await docker.close()
