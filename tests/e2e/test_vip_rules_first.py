"""A container that connects to a service by name the moment it starts reaches it however late the network agent
writes its VIP rules (docker executor, on a real dockerd).

The engine starts a container's process before the agent can put the VIP rules into its namespace. A name the
gateway DNS answered in between let the process connect to the VIP undiverted; the kernel then asks for the
VIP's MAC, which nobody has, and the connection fails once ARP gives up (3 s) unless the rules came in time for
the connection to be retried (shoal.net.conntrack). On a loaded machine they did not always
(tests/e2e/test_network_docker.py's "early" containers failed). The gateway DNS now answers a container once its
rules are in.

The agent is the real one, in this process, on the test run's dockerd (which shares this host namespace); the
scenario writes the rules 6 s after the container starts, as an agent busy with other containers does.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.wait import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

SUBNET = "10.219.81"
LATE = 6.0  # seconds the agent takes to write the client's rules: longer than ARP tries for the VIP


def _cluster(node_id: str) -> tuple[Any, Any, Any]:
    """A snapshot: overlay `appnet`, service `web` (VIP .2) with one task (.3), a client task (.5); both tasks."""
    from shoal.model.objects import Annotations
    from shoal.net.state import NetState, NodeAddrs
    from tests.support.netobjects import network, service, task

    net = network(f"net{secrets.token_hex(10)}", f"{SUBNET}.0/24", name="appnet", vni=0x3B000)
    web = service(f"svc{secrets.token_hex(8)}", "web", net=net.id, vip=f"{SUBNET}.2/24")
    backend = task(f"task{secrets.token_hex(8)}", net=net.id, addr=f"{SUBNET}.3/24", svc=web, node_id=node_id)
    client = task(f"task{secrets.token_hex(8)}", net=net.id, addr=f"{SUBNET}.5/24", node_id=node_id,
                  annotations=Annotations(name="client"))
    state = NetState(version=1, networks={net.id: net}, services={web.id: web},
                     tasks={backend.id: backend, client.id: client}, nodes={node_id: NodeAddrs("127.0.0.1", "")})
    return state, backend, client


async def _late(fn: Callable[[], Any], seconds: float) -> None:
    """The agent's lateness: `seconds`, cut short once `fn()` (run in a thread) is truthy."""
    with contextlib.suppress(AssertionError):  # the whole lateness passed: the usual case
        await eventually(lambda: asyncio.to_thread(fn), seconds, interval=0.1)


def _listening(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=1):
            return True
    except OSError:
        return False


async def _scenario(engine: docker.DockerClient, test_image: str, dockerd: str, base: Path) -> None:
    from shoal.net.agent import NetworkAgent
    from shoal.net.setup import remove_network_state
    from tests.support.netobjects import SnapshotFeed

    node_id = f"nodev{secrets.token_hex(8)}"
    state, backend, client = _cluster(node_id)
    agent = NetworkAgent(node_id, "127.0.0.1", base / "net", SnapshotFeed(state), engine_host=dockerd)
    made: list[Any] = []

    def run(name: str, nets: Any, cmd: str, resolv: str = "") -> Any:
        net, ip, _aliases = nets.endpoints[0]
        c = engine.api.create_container(
            test_image, ["sh", "-c", cmd], name=f"{name}-{node_id}", labels={"com.shoal.node.id": node_id},
            host_config=engine.api.create_host_config(network_mode=net, binds=[f"{resolv}:/etc/resolv.conf:ro"]
                                                      if resolv else None),
            networking_config=engine.api.create_networking_config(
                {net: engine.api.create_endpoint_config(ipv4_address=ip)}))
        made.append(c["Id"])
        engine.api.start(c["Id"])
        return c["Id"]

    def outcome(cid: str) -> str:
        """The client's output once its shell has printed the verdict (wget's page and the verdict are two
        writes, so output without a verdict is not the end), else ""."""
        out = str(engine.api.logs(cid).decode().strip())
        return out if out.split()[-1:] in (["fetched"], ["failed"]) else ""

    try:
        await agent.start()
        await agent.synced(1)
        nets = await agent.attach_container(backend)
        await asyncio.to_thread(run, "web", nets, "mkdir -p /www && echo backend > /www/index.html && "
                                                  "exec httpd -f -p 8080 -h /www")
        await eventually(lambda: asyncio.to_thread(_listening, (f"{SUBNET}.3", 8080)), 30,
                         what="the backend listening")

        nets = await agent.attach_container(client)
        cid = await asyncio.to_thread(run, "client", nets, "if wget -qO- http://web:8080/; then echo fetched; "
                                      "else echo failed; fi; exec sleep 3600", nets.resolv_conf)
        # The agent is late: its rules go in LATE seconds after the container started (sooner only if the
        # client has given up by then, which is what this test guards against).
        await _late(lambda: outcome(cid), LATE)
        pid = int(engine.api.inspect_container(cid)["State"]["Pid"])
        await agent.container_started(client, pid)
        out = await eventually(lambda: asyncio.to_thread(outcome, cid), 30, what="the client's verdict")
        assert out.split() == ["backend", "fetched"], out
    finally:
        for cid in made:
            engine.api.remove_container(cid, force=True)
        await agent.close()
        await remove_network_state(base / "net", node_id, dockerd)


def test_a_container_connecting_by_name_at_once_waits_for_its_vip_rules(dockerd: str, test_image: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="vip", dir="/tmp"))
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        asyncio.run(_scenario(engine, test_image, dockerd, base))
    finally:
        engine.close()
        shutil.rmtree(base, ignore_errors=True)
