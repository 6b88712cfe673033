"""Service networking with the docker executor on a real dockerd, one node: an overlay network becomes a bridge
network of the engine with Shoal's subnet, containers get the addresses Shoal allocated, the service name
resolves to its VIP (and `tasks.<name>` to the replicas, after a scale-down and a killed container too) from
Shoal's DNS, connections to the VIP spread over the replicas (also those made the moment a container
starts), the published port answers through the routing mesh, PROXY v2 reaches a container, host mode uses
the engine's port binding, and leaving the swarm removes the engine networks again. Plain containers on an
attachable overlay (`docker run --network`, `network connect`, docker-py) get Shoal's addresses, DNS and VIPs
and give the addresses back, also across a daemon crash.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.shoal_docker import ShoalDocker
from tests.support.managers import free_port
from tests.support.wait import wait_until

# One worker runs them in turn: with two of these swarms at once on the shared engine, a plain container's
# DNS lookups failed (the file alone on two workers, on main too); each test passes alone and in turn.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.xdist_group("netdocker")]

# An httpd answering with the container's own addresses.
SERVE_IPS = ("mkdir -p /www && ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1 | tr '\\n' ' ' "
             "> /www/index.html && exec httpd -f -p 8080 -h /www")


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
    nid = ""
    try:
        n.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        nid = node_id(n)
        yield n
    finally:
        if n.alive():
            n.docker("swarm", "leave", "--force", check=False)
        n.stop()
        # whatever a failed run left in the shared engine (task containers, plain ones on its networks)
        for c in engine.api.containers(all=True, filters={"label": f"com.shoal.node.id={nid}"}):
            engine.api.remove_container(c["Id"], force=True)
        for net in engine.api.networks(filters={"label": f"com.shoal.node.id={nid}"}):
            for c in engine.api.containers(all=True, filters={"network": net["Id"]}):
                engine.api.remove_container(c["Id"], force=True)
            engine.api.remove_network(net["Id"])
        for net in engine.api.networks(names=["locnet"]):
            for c in engine.api.containers(all=True, filters={"network": net["Id"]}):
                engine.api.remove_container(c["Id"], force=True)
            engine.api.remove_network(net["Id"])
        engine.close()
        shutil.rmtree(base, ignore_errors=True)


def node_id(n: ShoalDocker) -> str:
    out = n.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    assert out
    return out


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

    # The client's VIP rules follow the replicas a moment after its DNS does (tasks.web above): the VIP reaches
    # both replicas once they do.
    seen: set[str] = set()

    def spread() -> bool:
        seen.update(fetch("web"))
        return seen == replicas

    assert wait_until(spread, 30, what="the VIP reaching both replicas"), seen

    # Containers that connect to the VIP by name the moment they start, before their VIP rules can be in: the
    # gateway DNS answers each once its rules are in (tests/e2e/test_vip_rules_first.py makes them late).
    early = ("if busybox timeout 20 wget -qO- http://web:8080/ > /tmp/got; then echo early-ok $(cat /tmp/got); "
             "else echo early-failed; fi; exec sleep 3600")
    n.docker("service", "create", "--detach", "--name", "early", "--replicas", "4", "--network", "appnet",
             "--no-resolve-image", test_image, "sh", "-c", early)

    def early_results() -> list[str]:
        engine = docker.DockerClient(base_url=dockerd, timeout=60)
        try:
            return [engine.api.logs(c["Id"]).decode() for c in engine.api.containers(
                filters={"label": "com.docker.swarm.service.name=early"})]
        finally:
            engine.close()

    got = wait_until(lambda: (r := early_results()) and len(r) == 4 and all(x.strip() for x in r) and r, 60,
                     what="the early connections' results")
    assert all(x.startswith("early-ok") and set(x.split()[1:]) & replicas for x in got), got
    n.docker("service", "rm", "early")

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

    # tasks.web follows the running replicas: after a scale-down, and after a container is killed.
    n.docker("service", "scale", "--detach", "web=1")
    wait_until(lambda: len(running(n, "web")) == 1 and lookup("tasks.web") == addrs("web"), 30,
               what="tasks.web after scaling to 1")
    (only,) = running(n, "web")
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        engine.api.kill(only["Status"]["ContainerStatus"]["ContainerID"])
    finally:
        engine.close()
    old = {a.split("/")[0] for att in only["NetworksAttachments"] if att["Network"]["ID"] == net_id
           for a in att["Addresses"]}
    wait_until(lambda: not (lookup("tasks.web") & old), 30, what="the killed replica out of tasks.web")
    wait_until(lambda: len(running(n, "web")) == 1 and lookup("tasks.web") == addrs("web") != old, 60,
               what="its replacement in tasks.web")

    # PROXY protocol v2 toward a container: an echo server shows the header the mesh put first.
    pport = free_published_port()
    n.docker("service", "create", "--detach", "--name", "pp", "--label", "com.shoal.mesh.proxy-protocol=true",
             "--publish", f"{pport}:8080", "--no-resolve-image", test_image, "nc", "-ll", "-p", "8080", "-e", "cat")
    wait_until(lambda: len(running(n, "pp")) == 1, 60, what="pp running")

    def echoed() -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", pport), timeout=3) as s:
                s.sendall(b"hello\n")
                data = b""
                while b"hello" not in data and (chunk := s.recv(4096)):
                    data += chunk
                return data
        except OSError:
            return b""

    from shoal.net.lb import parse_proxy_v2

    got = wait_until(lambda: echoed().endswith(b"hello\n"), 30, what="the echo through the mesh") and echoed()
    hdr, used = parse_proxy_v2(got)
    assert hdr is not None and hdr.source[0] == "127.0.0.1" and hdr.destination[1] == pport, got
    assert got[used:] == b"hello\n"

    # Host mode: the engine's port binding on this node (on the overlay: the test engine has no default bridge).
    hport = free_published_port()
    n.docker("service", "create", "--detach", "--name", "hm", "--network", "appnet", "--publish",
             f"mode=host,published={hport},target=8080", "--no-resolve-image", test_image, "sh", "-c", SERVE_IPS)
    wait_until(lambda: len(running(n, "hm")) == 1, 60, what="hm running")

    def host_mode() -> str:
        try:
            with socket.create_connection(("127.0.0.1", hport), timeout=3) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return data.decode(errors="replace")
        except OSError:
            return ""

    body = wait_until(host_mode, 30, what="the host-mode port")
    assert "200 OK" in body and addrs("hm") & set(body.split()), body  # that task answered

    # Leaving the swarm removes the engine networks that stood for the overlays.
    nid = node_id(n)
    n.docker("swarm", "leave", "--force")
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        assert engine.api.networks(filters={"label": f"com.shoal.node.id={nid}"}) == []
    finally:
        engine.close()


def attachments(n: ShoalDocker) -> list[dict[str, Any]]:
    """The node's network attachment tasks (dockerd lists them only when asked for runtime=attachment)."""
    import urllib.parse

    st, body = api(n, "GET", "/v1.47/tasks?filters=" + urllib.parse.quote(json.dumps({"runtime": ["attachment"]})))
    assert st == 200, body
    return list(body)


def api(n: ShoalDocker, method: str, path: str) -> tuple[int, Any]:
    import http.client

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(n.socket))

    c = Conn("localhost", timeout=30)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


def test_plain_containers_on_an_attachable_overlay(node: ShoalDocker, test_image: str, dockerd: str) -> None:
    """`docker run --network <attachable overlay>` through Shoal: the container gets its address from Shoal's
    IPAM, resolves and reaches services by name and VIP, is resolvable and reachable by its name from service
    tasks, and gives the address back when it goes; a non-attachable overlay is refused with dockerd's
    message; `network connect`/`disconnect` do the same for an existing container."""
    n = node
    n.docker("network", "create", "-d", "overlay", "--attachable", "--subnet", "10.213.9.0/24", "attnet")
    n.docker("network", "create", "-d", "overlay", "--subnet", "10.213.10.0/24", "closednet")
    n.docker("service", "create", "--detach", "--name", "web", "--replicas", "2", "--network", "attnet",
             "--no-resolve-image", test_image, "sh", "-c", SERVE_IPS)
    n.docker("service", "create", "--detach", "--name", "client", "--network", "attnet", "--no-resolve-image",
             test_image, "sleep", "3600")
    wait_until(lambda: len(running(n, "web")) == 2 and len(running(n, "client")) == 1, 90,
               what="web 2/2 and client 1/1")
    net_id = json.loads(n.docker("network", "inspect", "attnet").stdout)[0]["Id"]
    replicas = {a.split("/")[0] for t in running(n, "web") for att in t["NetworksAttachments"]
                if att["Network"]["ID"] == net_id for a in att["Addresses"]}
    svc = json.loads(n.docker("service", "inspect", "web").stdout)[0]
    vip = next(v["Addr"].split("/")[0] for v in svc["Endpoint"]["VirtualIPs"] if v["NetworkID"] == net_id)
    assert attachments(n) == []

    # A plain container on the attachable overlay, through Shoal's socket.
    cid = n.docker("run", "-d", "--name", "plain1", "--network", "attnet", "--network-alias", "legacy",
                   test_image, "sh", "-c", SERVE_IPS).stdout.strip()
    atts = attachments(n)
    assert len(atts) == 1, atts
    addr = atts[0]["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
    assert atts[0]["NetworksAttachments"][0]["Network"]["ID"] == net_id
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        nets = engine.api.inspect_container(cid)["NetworkSettings"]["Networks"]
        assert [v["IPAddress"] for v in nets.values()] == [addr]  # the address Shoal's IPAM gave it
    finally:
        engine.close()
    assert addr.startswith("10.213.9.") and addr not in replicas and addr != vip
    # Not a task of any service: `docker node ps` / `service ps` do not show it.
    st, listed = api(n, "GET", "/v1.47/tasks")
    assert st == 200 and atts[0]["ID"] not in {t["ID"] for t in listed}

    def lookup(ctr: str, name: str) -> set[str]:
        out = n.docker("exec", ctr, "nslookup", name, check=False).stdout
        answer = out.split("Name:", 1)[1] if "Name:" in out else ""
        return {ln.split()[-1] for ln in answer.splitlines() if ln.strip().startswith("Address")}

    def fetch(ctr: str, host: str) -> set[str]:
        return set(n.docker("exec", ctr, "busybox", "timeout", "5", "wget", "-qO-", f"http://{host}:8080/",
                            check=False).stdout.split())

    # The container resolves the service through Shoal's DNS and reaches its replicas through the VIP.
    assert wait_until(lambda: lookup(cid, "web") == {vip}, 30, what="web -> VIP from the plain container")
    assert lookup(cid, "tasks.web") == replicas
    wait_until(lambda: fetch(cid, "web") & replicas, 30, what="the VIP from the plain container")
    seen = set().union(*(fetch(cid, "web") & replicas for _ in range(8)))
    assert seen == replicas, seen
    # Service tasks resolve and reach the container by its name and its alias.
    client = next(c for c in docker.DockerClient(base_url=dockerd).api.containers(
        filters={"label": "com.docker.swarm.service.name=client"}))["Id"]
    assert wait_until(lambda: lookup(client, "plain1") == {addr}, 30, what="plain1 from a service task")
    assert lookup(client, "legacy") == {addr}
    assert addr in fetch(client, "plain1")

    # The network is in use while the container holds its address.
    rm = n.docker("network", "rm", "attnet", check=False)
    assert rm.returncode != 0 and "is in use by" in rm.stderr, rm

    # A non-attachable overlay: refused as dockerd refuses it, and nothing is left allocated.
    refused = n.docker("run", "--rm", "--network", "closednet", test_image, "true", check=False)
    assert refused.returncode != 0
    assert ("Could not attach to network closednet: rpc error: code = PermissionDenied desc = network closednet "
            "not manually attachable") in refused.stderr, refused.stderr
    assert len(attachments(n)) == 1

    # The container goes: its address comes back.
    n.docker("rm", "-f", cid)
    wait_until(lambda: attachments(n) == [], 30, what="the attachment released after docker rm")
    # --rm: released when the engine removes the container on its own.
    out = n.docker("run", "--rm", "--network", "attnet", test_image, "nslookup", "web").stdout
    assert vip in out
    wait_until(lambda: attachments(n) == [], 30, what="the attachment released after run --rm")

    # network connect / disconnect of an existing container (created on a local bridge network of the engine:
    # the test engine has no default bridge).
    n.docker("network", "create", "--subnet", "10.214.3.0/24", "locnet")
    c2 = n.docker("create", "--name", "plain2", "--network", "locnet", test_image, "sh", "-c",
                  SERVE_IPS).stdout.strip()
    n.docker("network", "connect", "attnet", c2)
    # Not running: recorded and attached when it starts, as dockerd does (no address held before).
    assert attachments(n) == []
    n.docker("start", c2)
    atts = attachments(n)
    assert len(atts) == 1
    addr2 = atts[0]["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        got = {v["IPAddress"] for v in engine.api.inspect_container(c2)["NetworkSettings"]["Networks"].values()}
        assert addr2 in got
    finally:
        engine.close()
    try:
        wait_until(lambda: fetch(c2, vip) & replicas, 60, what="the VIP from a connected container")
    except AssertionError as e:  # the daemon's side of it (its VIP rules for the container) with the failure
        raise AssertionError(f"{e}\n--- shoal log ---\n{n.log_tail(8000)}") from None
    assert addr2 in fetch(client, addr2)  # and back, from a service task
    n.docker("network", "disconnect", "attnet", c2)
    wait_until(lambda: attachments(n) == [], 30, what="the attachment released after network disconnect")
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        assert list(engine.api.inspect_container(c2)["NetworkSettings"]["Networks"]) == ["locnet"]
    finally:
        engine.close()
    n.docker("rm", "-f", c2)
    # A container removed before it ever started leaves no deferred connect behind: the network can go.
    c3 = n.docker("create", "--name", "plain3", "--network", "locnet", test_image, "true").stdout.strip()
    n.docker("network", "connect", "attnet", c3)
    assert n.docker("network", "connect", "attnet", c3).returncode == 0  # again: replaces it, as in dockerd
    n.docker("rm", c3)
    wait_until(lambda: not (n.data_dir / "net" / "plain-deferred.json").exists()
               or json.loads((n.data_dir / "net" / "plain-deferred.json").read_text()) == {}, 30,
               what="the deferred connect forgotten after docker rm")
    assert attachments(n) == []
    n.docker("network", "rm", "locnet")

    # docker-py, unmodified, the same way.
    client = n.client()
    try:
        ctr = client.containers.run(test_image, ["sleep", "3600"], network="attnet", detach=True, name="plain4")
        (att,) = attachments(n)
        ctr.reload()
        assert ctr.attrs["NetworkSettings"]["Networks"] and [
            v["IPAddress"] for v in ctr.attrs["NetworkSettings"]["Networks"].values()] == [
            att["NetworksAttachments"][0]["Addresses"][0].split("/")[0]]
        assert lookup(ctr.id, "web") == {vip}
        ctr.remove(force=True)
        wait_until(lambda: attachments(n) == [], 30, what="released after docker-py's remove")
    finally:
        client.close()

    # Leaving the swarm removes the engine's networks that stood for the overlays, with a plain container
    # still on one of them (it loses that network, as with dockerd).
    c3 = n.docker("run", "-d", "--network", "attnet", test_image, "sleep", "3600").stdout.strip()
    nid = node_id(n)
    n.docker("swarm", "leave", "--force")
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        assert engine.api.networks(filters={"label": f"com.shoal.node.id={nid}"}) == []
        assert engine.api.inspect_container(c3)["NetworkSettings"]["Networks"] == {}
        engine.api.remove_container(c3, force=True)
    finally:
        engine.close()


def test_plain_container_attachments_survive_a_daemon_crash_and_leak_nothing(node: ShoalDocker, test_image: str,
                                                                            dockerd: str) -> None:
    """kill -9 of the daemon: a container removed meanwhile straight on the engine gives its address back once
    the daemon is up again; one that is still there keeps its address, its DNS and its VIP rules."""
    n = node
    n.docker("network", "create", "-d", "overlay", "--attachable", "--subnet", "10.213.11.0/24", "attnet")
    n.docker("service", "create", "--detach", "--name", "web", "--network", "attnet", "--no-resolve-image",
             test_image, "sh", "-c", SERVE_IPS)
    wait_until(lambda: len(running(n, "web")) == 1, 90, what="web 1/1")
    keep = n.docker("run", "-d", "--network", "attnet", test_image, "sleep", "3600").stdout.strip()
    gone = n.docker("run", "-d", "--network", "attnet", test_image, "sleep", "3600").stdout.strip()
    assert len(attachments(n)) == 2
    kept = {a["NetworksAttachments"][0]["Addresses"][0] for a in attachments(n)}
    n.kill()
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        engine.api.remove_container(gone, force=True)
        n.start()
        wait_until(lambda: len(attachments(n)) == 1, 60, what="the removed container's attachment released")
        ip = next(iter(v["IPAddress"] for v in engine.api.inspect_container(keep)["NetworkSettings"]["Networks"]
                       .values()))
        assert {a["NetworksAttachments"][0]["Addresses"][0].split("/")[0] for a in attachments(n)} == {ip}
        assert ip in {k.split("/")[0] for k in kept}
        # restarted: the new namespace gets its VIP rules again
        engine.api.restart(keep, timeout=1)
    finally:
        engine.close()

    def fetch() -> str:
        return n.docker("exec", keep, "busybox", "timeout", "5", "wget", "-qO-", "http://web:8080/",
                        check=False).stdout

    wait_until(lambda: fetch().strip(), 30, what="web through its VIP from the kept container")
    n.docker("rm", "-f", keep)
    wait_until(lambda: attachments(n) == [], 30, what="released")


@pytest.fixture
def outside() -> Iterator[tuple[str, str]]:
    """A client host: a namespace with a veth to the node's namespace. (namespace name, node's address there)"""
    import subprocess
    import uuid

    tag = uuid.uuid4().hex[:6]
    ns, veth = f"shlo-{tag}", f"shlo{tag}"
    third = int(tag[:2], 16)
    node_ip, client_ip = f"10.233.{third}.1", f"10.233.{third}.2"

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{node_ip}/30", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", f"{client_ip}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns, node_ip
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_local_only_mesh_keeps_the_client_address_of_a_container(node: ShoalDocker, test_image: str,
                                                                 outside: tuple[str, str]) -> None:
    """`com.shoal.mesh.local-only=true`: a connection from another host to the published port reaches the
    container from the client's own address (no source NAT); the same service without the label sees the
    node's ingress address (the control). Both go through the kernel's DNAT (the node forwards)."""
    import subprocess

    from shoal.host.nsutil import socket_in

    n = node
    ns, node_ip = outside
    client_ip = node_ip[:-1] + "2"
    # The container answers each connection with its own view of it: netstat's established TCP sockets.
    cmd = ("nc", "-ll", "-p", "8080", "-e", "netstat", "-tn")
    ports: dict[str, int] = {}
    for name, labels in (("lo1", ("--label", "com.shoal.mesh.local-only=true")), ("nat1", ())):
        ports[name] = next(p for p in iter(free_published_port, 0) if p not in ports.values())
        n.docker("service", "create", "--detach", "--name", name, *labels, "--publish", f"{ports[name]}:8080",
                 "--no-resolve-image", test_image, *cmd)
    wait_until(lambda: len(running(n, "lo1")) == 1 and len(running(n, "nat1")) == 1, 60, what="lo1 and nat1")

    def peers(port: int) -> set[str]:
        """The remote addresses the container saw on its port 8080, for one connection from the client host."""
        try:
            s = socket_in(f"/run/netns/{ns}", socket.AF_INET, socket.SOCK_STREAM)
            with s:
                s.settimeout(3)
                s.connect((node_ip, port))
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
        except OSError:
            return set()
        out = set()
        for line in data.decode(errors="replace").splitlines():
            f = line.split()
            if len(f) >= 6 and f[0] == "tcp" and f[3].endswith(":8080") and f[5] == "ESTABLISHED":
                out.add(f[4].rsplit(":", 1)[0].removeprefix("::ffff:"))  # nc listens dual-stack
        return out

    # The balancer holds each port from the start and serves until the task's address reaches the kernel's
    # rule: only connections made once both rules are in place show the kernel path.
    from shoal.net.kingress import host_table

    nid = json.loads(n.docker("node", "inspect", "self").stdout)[0]["ID"]

    def counts() -> dict[int, int]:
        table = subprocess.run(["nft", "list", "table", "ip", host_table(nid)], capture_output=True, text=True,
                               check=False).stdout
        found = {port: re.search(rf"dport {port} counter packets (\d+)", table) for port in ports.values()}
        return {port: int(m.group(1)) for port, m in found.items() if m}

    def both() -> dict[int, int] | None:
        c = counts()
        return c if len(c) == len(ports) else None

    before = wait_until(both, 60, what="the kernel's rules for both ports")
    seen = wait_until(lambda: peers(ports["lo1"]), 30, what="an answer through the local-only port")
    assert seen == {client_ip}, seen
    control = wait_until(lambda: peers(ports["nat1"]), 30, what="an answer through the plain mesh port")
    assert client_ip not in control and len(control) == 1, control  # the node's ingress address instead
    # The node forwards (dockerd turned it on): the kernel carried both, each port's DNAT rule counted them.
    after = counts()
    assert all(after.get(port, 0) > before[port] for port in ports.values()), (before, after)
    # The node-namespace rules the balancer's local-only needs (for clients it serves: those on the node
    # itself): replies marked and routed to the transparent socket.
    rules = subprocess.run(["ip", "rule", "show"], capture_output=True, text=True, check=True).stdout
    assert "lookup 23297" in rules, rules
    n.docker("service", "rm", "lo1", "nat1")


def test_network_prune_removes_unused_swarm_networks_and_keeps_shoals_engine_bridges(
        node: ShoalDocker, test_image: str, dockerd: str) -> None:
    """`docker network prune` through a manager: unused swarm networks go (as dockerd prunes its cluster's), the
    engine's own unused networks go, and the engine bridge standing for an overlay a container is configured on
    stays even while nothing is connected to it (it is Shoal's to remove)."""
    n = node
    n.docker("network", "create", "-d", "overlay", "--attachable", "--subnet", "10.213.21.0/24", "keepnet")
    n.docker("network", "create", "-d", "overlay", "--subnet", "10.213.22.0/24", "dropnet")
    n.docker("network", "create", "--subnet", "10.214.21.0/24", "loconly")  # the engine's own
    # Created, not started: configured on keepnet's engine bridge, with no endpoint on it yet.
    n.docker("create", "--name", "idle", "--network", "keepnet", test_image, "true")
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        nid = node_id(n)
        bridges = [x["Name"] for x in engine.api.networks(filters={"label": f"com.shoal.node.id={nid}"})]
        assert len(bridges) == 1, bridges
        out = n.docker("network", "prune", "-f").stdout
        assert "dropnet" in out and "loconly" in out and "keepnet" not in out, out
        assert [x["Name"] for x in engine.api.networks(filters={"label": f"com.shoal.node.id={nid}"})] == bridges
        names = set(n.docker("network", "ls", "--format", "{{.Name}}").stdout.split())
        assert "keepnet" in names and "dropnet" not in names and "loconly" not in names, names
        # The container still starts on its overlay after the prune.
        n.docker("start", "-a", "idle")
    finally:
        engine.close()


def test_engine_networks_an_earlier_run_left_are_collected_after_a_restart(
        node: ShoalDocker, test_image: str, dockerd: str) -> None:
    """A daemon killed while it held an engine network for an overlay leaves it (and its bridge) behind; the next
    run removes it once it knows nothing of this node needs it, and keeps the one a stopped plain container is
    configured on."""
    n = node
    n.docker("network", "create", "-d", "overlay", "--subnet", "10.213.31.0/24", "leftnet")
    n.docker("network", "create", "-d", "overlay", "--attachable", "--subnet", "10.213.32.0/24", "heldnet")
    left_id = json.loads(n.docker("network", "inspect", "leftnet").stdout)[0]["Id"]
    n.docker("create", "--name", "parked", "--network", "heldnet", test_image, "true")
    nid = node_id(n)
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        n.kill()
        # What the killed run left: an engine network (with its bridge) for an overlay nothing here uses now.
        engine.api.create_network("shoal-" + left_id[:12], driver="bridge", labels={
            "com.shoal.network.id": left_id, "com.shoal.node.id": nid},
            ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.213.31.0/24")]))

        def ours() -> set[str]:
            return {x["Name"] for x in engine.api.networks(filters={"label": f"com.shoal.node.id={nid}"})}

        assert "shoal-" + left_id[:12] in ours()
        n.start()
        wait_until(lambda: "shoal-" + left_id[:12] not in ours(), 60, what="the leftover engine network removed")
        held = json.loads(n.docker("network", "inspect", "heldnet").stdout)[0]["Id"]
        assert "shoal-" + held[:12] in ours()  # the parked container's stays
        n.docker("start", "-a", "parked")
    finally:
        engine.close()
