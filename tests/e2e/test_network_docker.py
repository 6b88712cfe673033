"""Service networking with the docker executor on a real dockerd, one node: an overlay network becomes a bridge
network of the engine with Shoal's subnet, containers get the addresses Shoal allocated, the service name
resolves to its VIP (and `tasks.<name>` to the replicas) from Shoal's DNS, connections to the VIP spread over
the replicas, and the published port answers through the routing mesh. Leaving the swarm removes the engine
networks again.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.shoal_docker import ShoalDocker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]


def free_published_port() -> int:
    for port in range(31700, 32700):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port")


@pytest.fixture
def node(dockerd: str, test_image: str) -> Iterator[ShoalDocker]:
    base = Path(tempfile.mkdtemp(prefix="sn", dir="/tmp"))
    n = ShoalDocker(base, dockerd, hostname="netnode", extra_args=("--dns-upstream", "none"))
    n.start()
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    node_id = ""
    try:
        n.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        node_id = n.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        yield n
    finally:
        if n.alive():
            n.docker("swarm", "leave", "--force", check=False)
        n.stop()
        # whatever a failed run left in the shared engine
        for c in engine.api.containers(all=True, filters={"label": f"com.shoal.node.id={node_id}"}):
            engine.api.remove_container(c["Id"], force=True)
        for net in engine.api.networks(filters={"label": f"com.shoal.node.id={node_id}"}):
            engine.api.remove_network(net["Id"])
        engine.close()
        shutil.rmtree(base, ignore_errors=True)


def running(n: ShoalDocker, service: str) -> list[dict[str, Any]]:
    raw = n.docker("service", "ps", "-q", "--no-trunc", "--filter", "desired-state=running", service).stdout.split()
    tasks = [json.loads(n.docker("inspect", "--type", "task", t).stdout)[0] for t in raw]
    return [t for t in tasks if t["Status"]["State"] == "running"]


def test_overlay_vip_dns_and_mesh_with_containers(node: ShoalDocker, test_image: str, dockerd: str) -> None:
    n = node
    port = free_published_port()
    n.docker("network", "create", "-d", "overlay", "--subnet", "10.213.7.0/24", "appnet")
    n.docker("service", "create", "--detach", "--name", "web", "--replicas", "2", "--network", "appnet",
             "--publish", f"{port}:8080", "--no-resolve-image", test_image,
             "sh", "-c", "mkdir -p /www && ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1 | tr '\\n' ' ' "
             "> /www/index.html && exec httpd -f -p 8080 -h /www")
    n.docker("service", "create", "--detach", "--name", "client", "--network", "appnet", "--no-resolve-image",
             test_image, "sleep", "3600")
    wait_until(lambda: len(running(n, "web")) == 2 and len(running(n, "client")) == 1, 90,
               what="web 2/2 and client 1/1")
    net_id = json.loads(n.docker("network", "inspect", "appnet").stdout)[0]["Id"]

    def addrs(service: str) -> set[str]:
        return {a.split("/")[0] for t in running(n, service) for att in t["NetworksAttachments"]
                if att["Network"]["ID"] == net_id for a in att["Addresses"]}

    replicas = addrs("web")
    assert len(replicas) == 2 and all(a.startswith("10.213.7.") for a in replicas)
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        # The containers carry exactly the addresses Shoal allocated, on the engine's bridge for the overlay.
        engine_ips = set()
        for c in engine.api.containers(filters={"label": "com.docker.swarm.service.name=web"}):
            for net in c["NetworkSettings"]["Networks"].values():
                engine_ips.add(net["IPAddress"])
        assert replicas <= engine_ips
        client = engine.api.containers(filters={"label": "com.docker.swarm.service.name=client"})[0]["Id"]
    finally:
        engine.close()

    svc = json.loads(n.docker("service", "inspect", "web").stdout)[0]
    vip = next(v["Addr"].split("/")[0] for v in svc["Endpoint"]["VirtualIPs"] if v["NetworkID"] == net_id)

    def lookup(name: str) -> set[str]:
        out = n.docker("exec", client, "nslookup", name, check=False).stdout
        # busybox nslookup prints the server first, then "Name: ... / Address: ..." pairs
        answer = out.split("Name:", 1)[1] if "Name:" in out else ""
        return {ln.split()[-1] for ln in answer.splitlines() if ln.strip().startswith("Address")}

    assert wait_until(lambda: lookup("web") == {vip}, 30, what="web -> its VIP")
    assert wait_until(lambda: lookup("tasks.web") == replicas, 30, what="tasks.web -> the replicas")

    def fetch(host: str) -> set[str]:
        return set(n.docker("exec", client, "busybox", "timeout", "5", "wget", "-qO-", f"http://{host}:8080/",
                            check=False).stdout.split()) & replicas

    seen = set().union(*(fetch("web") for _ in range(8)))
    assert seen == replicas, seen

    # The routing mesh: the published port on the node answers from a replica.
    def mesh() -> set[str]:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return set(data.decode(errors="replace").rsplit("\r\n\r\n", 1)[-1].split()) & replicas
        except OSError:
            return set()

    assert wait_until(lambda: mesh(), 30, what="the published port")
