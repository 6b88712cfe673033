"""Service networking across hosts: five network namespaces on one bridge (the physical network), a real
`shoal daemon` in four of them (h1 manager, h2-h4 workers, process executor), the fifth (h5) an outside
client that also runs a fake upstream DNS server.

The replicas (tests/net/replica.py) answer who they are (their addresses) and who called. The client task
runs `sleep`; the tests probe from inside its network and mount namespaces (nsenter into its process), which
is what the task itself sees: its resolv.conf, its DNS server at 127.0.0.11, its VIP rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.net.kingress import host_table
from tests.net.netns import Host, Lab, why_not
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import join_worker

reason = why_not()
pytestmark = [pytest.mark.skipif(reason is not None, reason=reason or ""), pytest.mark.slow,
              pytest.mark.xdist_group("netlab"), pytest.mark.timeout(300)]

HERE = Path(__file__).parent
PY = sys.executable
SUBNET = "192.168.250"
UPSTREAM = f"{SUBNET}.5:5353"
KEEPALIVE = "2,1,3"  # the mesh's TCP keepalive: first probe after 2 s idle, then every second
FAKE_DNS = """
import socket
from dnslib import DNSRecord, RR, A, QTYPE
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    q = DNSRecord.parse(data)
    r = q.reply()
    if str(q.q.qname).endswith("outside.test.") and q.q.qtype == QTYPE.A:
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("203.0.113.7"), ttl=5))
    s.sendto(r.pack(), peer)
"""


class Mesh:
    def __init__(self, lab: Lab, hosts: list[Host], nodes: list[ShoalNode]) -> None:
        self.lab, self.hosts, self.nodes = lab, hosts, nodes
        self.mgr = nodes[0]
        self.outside = hosts[4]

    def addr(self, i: int) -> str:
        return f"{SUBNET}.{i}"

    def tasks(self, service: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        status, body = self.mgr.api("GET", "/v1.47/tasks?filters=" + quote(json.dumps({"service": [service]})))
        assert status == 200, body
        return list(body)

    def running(self, service: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks(service)
                if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]

    def network_id(self, name: str) -> str:
        return str(json.loads(self.mgr.docker("network", "inspect", name).stdout)[0]["Id"])

    def ips(self, service: str, network: str) -> set[str]:
        """The addresses on `network` of the service's running tasks, as the API reports them."""
        nid = self.network_id(network)
        return {a.split("/")[0] for t in self.running(service) for att in t.get("NetworksAttachments") or []
                if att["Network"]["ID"] == nid for a in att["Addresses"]}

    def vip(self, service: str, network: str) -> str:
        nid = self.network_id(network)
        svc = json.loads(self.mgr.docker("service", "inspect", service).stdout)[0]
        return next(v["Addr"].split("/")[0] for v in svc["Endpoint"]["VirtualIPs"] if v["NetworkID"] == nid)

    def in_net_ns(self, i: int, network: str, *cmd: str) -> str:
        """Run `cmd` in host i's namespace of `network` (bound in its daemon's own mount namespace)."""
        node = self.nodes[i - 1]
        assert node.proc is not None
        ns = node.data_dir / "net" / "ns" / f"n-{self.network_id(network)[:20]}"
        r = subprocess.run(["nsenter", "-t", str(node.proc.pid), "-m", "--", "nsenter", f"--net={ns}", *cmd],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def forwarding(self, i: int, network: str) -> dict[str, str]:
        """Host i's programmed VXLAN entries on `network`: overlay IP -> the host (underlay address) it is on."""
        vni = json.loads(self.mgr.docker("network", "inspect", network).stdout)[0]["Options"][
            "com.docker.network.driver.overlay.vxlanid_list"]
        neigh = self.in_net_ns(i, network, "ip", "-j", "neigh", "show", "dev", f"vx{vni}", "nud", "permanent")
        fdb = self.in_net_ns(i, network, "bridge", "-j", "fdb", "show", "dev", f"vx{vni}")
        dst = {e["mac"]: e.get("dst", "") for e in json.loads(fdb or "[]") if e.get("dst")}
        return {e["dst"]: dst.get(e["lladdr"], "?") for e in json.loads(neigh or "[]")}

    def holders_elsewhere(self, i: int, network: str) -> dict[str, str]:
        """What host i must have programmed: every address on `network` of a task that holds it (not ended)
        on another host -> that host's address."""
        nid = self.network_id(network)
        hosts = {n["ID"]: n["Status"]["Addr"] for n in json.loads(self.mgr.docker(
            "node", "inspect", *self.mgr.docker("node", "ls", "-q").stdout.split()).stdout)}
        me = f"h{i}"
        mine = json.loads(self.mgr.docker("node", "inspect", me).stdout)[0]["ID"]
        status, body = self.mgr.api("GET", "/v1.47/tasks")
        assert status == 200, body
        ended = {"complete", "shutdown", "failed", "rejected", "remove", "orphaned"}
        return {a.split("/")[0]: hosts[t["NodeID"]] for t in body
                if t.get("NodeID") and t["NodeID"] != mine and t["Status"]["State"] not in ended
                for att in t.get("NetworksAttachments") or [] if att["Network"]["ID"] == nid
                for a in att["Addresses"]}

    def task_pid(self, service: str) -> int:
        """The pid of the (single) running task process of `service`, on whichever node runs it."""
        t = self.running(service)[0]
        for n in self.nodes:
            pid = n.command_pids().get(t["ID"])
            if pid:
                return pid
        raise AssertionError(f"no process for task {t['ID']}")

    def in_task(self, pid: int, *args: str) -> Any:
        r = subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", PY, str(HERE / "probe.py"), *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def node_id(self, i: int) -> str:
        return str(json.loads(self.mgr.docker("node", "inspect", f"h{i}").stdout)[0]["ID"])

    def kernel_dnats(self, i: int) -> dict[str, int] | None:
        """Host i's kernel mesh in its own namespace: the packets each DNAT rule took ("tcp"/"udp" -> count),
        None when the node has no such table."""

        r = self.hosts[i - 1].run("nft", "-j", "list", "table", "ip", host_table(self.node_id(i)))
        if r.returncode != 0:
            return None
        out: dict[str, int] = {}
        for item in json.loads(r.stdout)["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            text = json.dumps(rule["expr"])
            count = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), None)
            for proto in ("tcp", "udp"):
                if count is not None and f'"protocol": "{proto}"' in text:
                    out[proto] = count
        return out

    def from_outside(self, *args: str) -> Any:
        r = self.outside.run(PY, str(HERE / "probe.py"), *args, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    from tests.cluster.conftest import _require_cli

    _require_cli()
    base = tmp_path_factory.mktemp("mesh")
    nodes: list[ShoalNode] = []
    upstream: subprocess.Popen[str] | None = None
    with Lab() as lab:
        try:
            hosts = [lab.host(f"{SUBNET}.{i}/24") for i in range(1, 6)]
            for i, h in enumerate(hosts[:4]):  # h1-h3 forward, as a host running Docker does: the kernel
                # carries their mesh; h4 does not: its balancer does (a new namespace inherits the machine's)
                h.run("sysctl", "-qw", f"net.ipv4.ip_forward={int(i < 3)}", check=True)
            upstream = subprocess.Popen(["ip", "netns", "exec", hosts[4].name, PY, "-c", FAKE_DNS],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert upstream.stdout is not None and upstream.stdout.readline().strip() == "ready"
            for i, h in enumerate(hosts[:4], start=1):
                nodes.append(ShoalNode(base / f"h{i}", hostname=f"h{i}", prefix=("ip", "netns", "exec", h.name),
                                       extra_args=("--dns-upstream", UPSTREAM, "--mesh-keepalive",
                                                   KEEPALIVE)).start())
            mgr = nodes[0]
            mgr.docker("swarm", "init", "--advertise-addr", f"{SUBNET}.1", "--listen-addr", f"{SUBNET}.1:2377")
            for i, n in enumerate(nodes[1:], start=2):
                join_worker(mgr, n, f"{SUBNET}.1:2377", "--advertise-addr", f"{SUBNET}.{i}",
                            "--listen-addr", f"{SUBNET}.{i}:2377")
            wait_until(lambda: mgr.docker("node", "ls", "--format", "{{.Status}}").stdout.split().count("Ready")
                       == 4, 30, what="four ready nodes")
            for h in ("h1", "h2", "h3"):
                mgr.docker("node", "update", "--label-add", "web=1", h)
            mgr.docker("network", "create", "-d", "overlay", "appnet")
            mgr.docker("service", "create", "--detach", "--name", "web", "--replicas", "3",
                       "--constraint", "node.labels.web==1", "--replicas-max-per-node", "1",
                       "--network", "name=appnet,alias=frontend", "--publish", "30080:8080",
                       "--publish", "30081:8081/udp",
                       "busybox", PY, str(HERE / "replica.py"), "8080", "8081")
            mgr.docker("service", "create", "--detach", "--name", "client", "--constraint", "node.hostname==h4",
                       "--network", "appnet", "busybox", "sleep", "3600")
            m = Mesh(lab, hosts, nodes)
            wait_until(lambda: len(m.running("web")) == 3 and len(m.running("client")) == 1, 60,
                       what="web 3/3 and client 1/1")
            yield m
        finally:
            for n in nodes:
                n.stop()
            if upstream is not None:
                upstream.kill()
                upstream.wait()


def test_client_resolves_the_service_and_reaches_every_replica_through_the_vip(mesh: Mesh) -> None:
    pid = mesh.task_pid("client")
    vip = mesh.vip("web", "appnet")
    assert mesh.in_task(pid, "resolve", "web") == [vip]
    assert mesh.in_task(pid, "resolve", "frontend") == [vip]  # the network alias
    replicas = mesh.ips("web", "appnet")
    assert len(replicas) == 3
    nid = mesh.network_id("appnet")
    for t in mesh.running("web"):  # each task by its name
        name = f"web.{t['Slot']}.{t['ID']}"
        assert mesh.in_task(pid, "resolve", name) == [a.split("/")[0] for att in t["NetworksAttachments"]
                                                      if att["Network"]["ID"] == nid for a in att["Addresses"]]
    answers = mesh.in_task(pid, "tcp", "web", "8080", "9")
    assert all(a is not None for a in answers), answers
    seen = {ip for a in answers for ip in a["ips"] if ip in replicas}
    assert seen == replicas
    # Through the VIP the replica sees the client task's own address: no source NAT on the overlay.
    client_ip = mesh.ips("client", "appnet").pop()
    assert {a["peer"].split(":")[0] for a in answers} == {client_ip}
    # UDP through the VIP too.
    udp = mesh.in_task(pid, "udp", "web", "8081", "6")
    assert all(a is not None for a in udp), udp
    assert {ip for a in udp for ip in a["ips"] if ip in replicas} == replicas


def test_names_other_than_ours_are_forwarded_upstream(mesh: Mesh) -> None:
    pid = mesh.task_pid("client")
    assert mesh.in_task(pid, "resolve", "www.outside.test") == ["203.0.113.7"]
    assert mesh.in_task(pid, "resolve", "nope.invalid") == []


def test_published_port_answers_on_every_host(mesh: Mesh) -> None:
    """Every host takes the connection (h4 runs no replica) and spreads it over the replicas wherever they
    run: from each host, six connections (and six UDP flows) reach all three."""
    replicas = mesh.ips("web", "appnet")
    for i in range(1, 5):
        answers = mesh.from_outside("tcp", mesh.addr(i), "30080", "6")
        assert all(a is not None for a in answers), (i, answers)
        assert {ip for a in answers for ip in a["ips"]} & replicas == replicas, (i, answers)
        udp = mesh.from_outside("udp", mesh.addr(i), "30081", "6")
        assert all(a is not None for a in udp), (i, udp)
        assert {ip for a in udp for ip in a["ips"]} & replicas == replicas, (i, udp)


def test_the_kernel_carries_the_mesh_on_forwarding_nodes_and_nothing_else(mesh: Mesh) -> None:
    """On h1 (it forwards), connections from outside to a published port are DNATed in the kernel: its rule
    counts each new one, and the replicas see them from h1's ingress address, not the client's. h4 does not
    forward: no kernel rules there, its balancer serves (test_published_port_answers_on_every_host). Through
    the kernel path's link into the ingress namespace goes only what it DNATed: a task gets no way out."""
    wait_until(lambda: mesh.kernel_dnats(1), 30, what="h1's kernel mesh rules")
    assert mesh.kernel_dnats(4) is None
    before = mesh.kernel_dnats(1)
    assert before is not None
    replicas = mesh.ips("web", "appnet")
    answers = mesh.from_outside("tcp", mesh.addr(1), "30080", "6")
    udp = mesh.from_outside("udp", mesh.addr(1), "30081", "6")
    after = mesh.kernel_dnats(1)
    assert after is not None
    assert after["tcp"] - before["tcp"] >= 6 and after["udp"] - before["udp"] >= 6, (before, after)
    assert all(a is not None for a in answers + udp), (answers, udp)
    assert {ip for a in answers for ip in a["ips"]} & replicas == replicas, answers
    assert all(a["peer"].split(":")[0] != mesh.outside.ip_addr for a in answers + udp), answers + udp
    # Someone deletes the link on h1 (either end takes the other): the next change of the cluster makes it
    # again, and the kernel path serves (with the link gone, its DNAT leads nowhere).
    from shoal.net.kingress import host_link

    link = host_link(mesh.node_id(1))
    assert mesh.hosts[0].ip("link", "del", link).returncode == 0
    # No way out through the link: a task whose only network is ingress (its default route leads into the
    # ingress namespace) cannot reach the outside host, which answers the same connection from h1 itself.
    mesh.mgr.docker("service", "create", "--detach", "--name", "kout", "--constraint", "node.hostname==h1",
                    "--publish", "30094:8080", "busybox", PY, str(HERE / "replica.py"), "8080", "8081")
    server = subprocess.Popen(["ip", "netns", "exec", mesh.outside.name, PY, str(HERE / "replica.py"), "30199",
                               "30198"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(mesh.running("kout")) == 1, 30, what="kout running")
        wait_until(lambda: mesh.from_outside("tcp", mesh.addr(1), "30094", "1")[0], 20, what="kout through h1")
        assert mesh.hosts[0].ip("link", "show", link, check=False).returncode == 0  # made again
        wait_until(lambda: mesh.hosts[0].run(PY, str(HERE / "probe.py"), "tcp", mesh.outside.ip_addr, "30199",
                                             "1").stdout.strip() != "[null]", 20, what="the outside server")
        assert mesh.in_task(mesh.task_pid("kout"), "tcp", mesh.outside.ip_addr, "30199", "1") == [None]
    finally:
        server.kill()
        server.wait()
        mesh.mgr.docker("service", "rm", "kout")


def test_a_port_another_program_holds_stays_its_own(mesh: Mesh) -> None:
    """A program on h3 listens on 30085 before a service publishes it: h3's balancer cannot take the port, and
    the kernel path does not take it either (no DNAT stealing the program's connections); other nodes serve
    the service on it."""
    own = subprocess.Popen(["ip", "netns", "exec", mesh.hosts[2].name, PY, str(HERE / "replica.py"), "30085",
                            "30086"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = wait_until(lambda: mesh.from_outside("tcp", mesh.addr(3), "30085", "1")[0], 20,
                           what="h3's own server")
        assert mesh.addr(3) in first["ips"]
        mesh.mgr.docker("service", "create", "--detach", "--name", "taken", "--constraint", "node.hostname==h2",
                        "--publish", "30085:8080", "busybox", PY, str(HERE / "replica.py"), "8080", "8081")
        wait_until(lambda: len(mesh.running("taken")) == 1, 30, what="taken running")
        mine = mesh.ips("taken", "ingress")
        wait_until(lambda: set((mesh.from_outside("tcp", mesh.addr(1), "30085", "1")[0] or {}).get("ips", []))
                   & mine, 20, what="the service through h1")
        table = mesh.hosts[2].run("nft", "list", "table", "ip", host_table(mesh.node_id(3))).stdout
        assert "30085" not in table, table
        for a in mesh.from_outside("tcp", mesh.addr(3), "30085", "4"):
            assert a is not None and mesh.addr(3) in a["ips"], a  # still the program's, every time
    finally:
        own.kill()
        own.wait()
        mesh.mgr.docker("service", "rm", "taken")


def test_tasks_name_lists_exactly_the_running_replicas(mesh: Mesh) -> None:
    pid = mesh.task_pid("client")

    def agrees() -> bool:
        return set(mesh.in_task(pid, "resolve", "tasks.web")) == mesh.ips("web", "appnet")

    def programmed() -> bool:  # h4's VXLAN entries: exactly the appnet tasks on other hosts, no stale ones
        return mesh.forwarding(4, "appnet") == mesh.holders_elsewhere(4, "appnet")

    wait_until(agrees, 20, what="tasks.web == the running replicas")
    wait_until(programmed, 20, what="h4's forwarding entries")
    assert len(mesh.forwarding(4, "appnet")) >= 3
    mesh.mgr.docker("service", "scale", "--detach", "web=2")
    wait_until(lambda: len(mesh.running("web")) == 2 and agrees(), 30, what="tasks.web after scaling to 2")
    assert len(mesh.in_task(pid, "resolve", "tasks.web")) == 2
    wait_until(programmed, 30, what="h4's forwarding entries after the scale-down")
    # Kill one replica's process: its address leaves the answers; its replacement's joins them.
    victim = mesh.running("web")[0]
    victim_ips = {a.split("/")[0] for att in victim["NetworksAttachments"] for a in att["Addresses"]}
    for n in mesh.nodes:
        p = n.command_pids().get(victim["ID"])
        if p:
            subprocess.run(["kill", "-9", str(p)], check=True)
    wait_until(lambda: not (set(mesh.in_task(pid, "resolve", "tasks.web")) & victim_ips), 20,
               what="the killed replica to leave tasks.web")
    wait_until(lambda: len(mesh.running("web")) == 2 and agrees(), 60, what="a replacement in tasks.web")
    mesh.mgr.docker("service", "scale", "--detach", "web=3")
    wait_until(lambda: len(mesh.running("web")) == 3 and agrees(), 60, what="back to three")
    wait_until(programmed, 30, what="h4's forwarding entries with three replicas again")


def test_proxy_protocol_delivers_the_real_client_address(mesh: Mesh) -> None:
    mesh.mgr.docker("service", "create", "--detach", "--name", "pp", "--constraint", "node.hostname==h2",
                    "--label", "com.shoal.mesh.proxy-protocol=true", "--publish", "30090:8080",
                    "busybox", PY, str(HERE / "replica.py"), "8080", "8081")
    wait_until(lambda: len(mesh.running("pp")) == 1, 30, what="pp running")
    outside = mesh.outside.ip_addr
    for i in (2, 3):  # the task's own node and another one
        got = wait_until(lambda i=i: mesh.from_outside("tcp", mesh.addr(i), "30090", "1")[0], 20,
                         what=f"pp through h{i}")
        assert got["proxy"].split(":")[0] == outside, got
    mesh.mgr.docker("service", "rm", "pp")


def test_host_mode_publishes_on_the_tasks_node_only(mesh: Mesh) -> None:
    mesh.mgr.docker("service", "create", "--detach", "--name", "hm", "--constraint", "node.hostname==h3",
                    "--publish", "mode=host,target=30095,published=30095",
                    "busybox", PY, str(HERE / "replica.py"), "30095", "30096")
    wait_until(lambda: len(mesh.running("hm")) == 1, 30, what="hm running")
    got = wait_until(lambda: mesh.from_outside("tcp", mesh.addr(3), "30095", "1")[0], 20, what="hm on h3")
    assert mesh.addr(3) in got["ips"]
    assert mesh.from_outside("tcp", mesh.addr(2), "30095", "1") == [None]
    mesh.mgr.docker("service", "rm", "hm")


def test_host_mode_port_of_a_task_on_an_overlay(mesh: Mesh) -> None:
    """The task runs in its own namespace (it is on appnet): its node forwards the published port to it."""
    mesh.mgr.docker("service", "create", "--detach", "--name", "hmn", "--constraint", "node.hostname==h3",
                    "--network", "appnet", "--publish", "mode=host,target=8080,published=30097",
                    "--publish", "mode=host,target=8081,published=30098,protocol=udp",
                    "busybox", PY, str(HERE / "replica.py"), "8080", "8081")
    wait_until(lambda: len(mesh.running("hmn")) == 1, 30, what="hmn running")
    mine = mesh.ips("hmn", "appnet")
    got = wait_until(lambda: mesh.from_outside("tcp", mesh.addr(3), "30097", "1")[0], 20, what="hmn on h3")
    assert set(got["ips"]) & mine, got  # the task itself answered (its overlay address), not the node
    udp = wait_until(lambda: mesh.from_outside("udp", mesh.addr(3), "30098", "1")[0], 20, what="hmn UDP on h3")
    assert set(udp["ips"]) & mine, udp
    for i in (1, 2, 4):  # nowhere else
        assert mesh.from_outside("tcp", mesh.addr(i), "30097", "1") == [None]
    mesh.mgr.docker("service", "rm", "hmn")
    wait_until(lambda: mesh.from_outside("tcp", mesh.addr(3), "30097", "1") == [None], 30,
               what="the forwarded port closed with its task")


def test_local_only_keeps_the_client_address_without_source_nat(mesh: Mesh) -> None:
    mesh.mgr.docker("service", "create", "--detach", "--name", "lo", "--constraint", "node.hostname==h2",
                    "--label", "com.shoal.mesh.local-only=true", "--publish", "30091:8080",
                    "--publish", "30092:8081/udp", "busybox", PY, str(HERE / "replica.py"), "8080", "8081")
    wait_until(lambda: len(mesh.running("lo")) == 1, 30, what="lo running")
    got = wait_until(lambda: mesh.from_outside("tcp", mesh.addr(2), "30091", "1")[0], 20, what="lo through h2")
    assert got["peer"].split(":")[0] == mesh.outside.ip_addr, got  # the real client, at the IP level
    assert got["proxy"] is None
    nft = mesh.hosts[1].run("nft", "list", "table", "ip", host_table(mesh.node_id(2))).stdout
    assert "30091" in nft and "30092" in nft, nft  # h2 forwards: its kernel carried these
    # UDP too: the datagrams reach the task from the client's own address.
    udp = wait_until(lambda: mesh.from_outside("udp", mesh.addr(2), "30092", "1")[0], 20, what="lo UDP via h2")
    assert udp["peer"].split(":")[0] == mesh.outside.ip_addr, udp
    # h3 has no task of the service: local-only sends nothing across hosts.
    assert mesh.from_outside("tcp", mesh.addr(3), "30091", "1") == [None]
    assert mesh.from_outside("udp", mesh.addr(3), "30092", "1") == [None]
    mesh.mgr.docker("service", "rm", "lo")


def test_internal_network_with_mtu_option(mesh: Mesh) -> None:
    mesh.mgr.docker("network", "create", "-d", "overlay", "--internal", "--opt",
                    "com.docker.network.driver.mtu=1400", "isonet")
    mesh.mgr.docker("service", "create", "--detach", "--name", "iso", "--constraint", "node.hostname==h2",
                    "--network", "isonet", "busybox", "sleep", "3600")
    wait_until(lambda: len(mesh.running("iso")) == 1, 30, what="iso running")
    pid = mesh.task_pid("iso")

    def sh(*cmd: str) -> str:
        return subprocess.run(["nsenter", "-t", str(pid), "-n", *cmd], capture_output=True, text=True,
                              timeout=30).stdout

    assert "mtu 1400" in sh("ip", "-o", "link", "show", "eth0")
    assert sh("ip", "route", "show", "default").strip() == ""  # internal: no way out
    assert mesh.in_task(pid, "resolve", "iso") == [mesh.vip("iso", "isonet")]  # its own names resolve
    assert mesh.in_task(pid, "resolve", "www.outside.test") == []  # others are not forwarded
    mesh.mgr.docker("service", "rm", "iso")
    wait_until(lambda: mesh.mgr.docker("network", "rm", "isonet", check=False).returncode == 0, 30,
               what="isonet removed once its service is gone")


# A stateful firewall that forgets a connection after 5 s without a packet and then drops whatever still comes
# for it (no mid-stream pickup), as NAT gateways and cloud load balancers do after their idle timeout.
FORGETFUL = ("sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=5 net.netfilter.nf_conntrack_tcp_loose=0"
             " && nft -f - <<'EOF'\ntable inet forgetful {\n  chain input {\n    type filter hook input priority 0;"
             " policy accept;\n    ct state invalid drop\n  }\n}\nEOF\n")


def test_long_idle_connections_through_the_mesh_are_kept_alive(mesh: Mesh) -> None:
    """A connection through the mesh (client -> h3's balancer -> the task on h2; the service's keepalive label
    keeps it on the balancer) stays silent for three times the firewalls' idle timeout and still works: the
    balancer's keepalive probes on both legs keep the firewalls in front of the client and of the task
    remembering it. The same firewall kills a plain
    connection that idles as long (the control), so it is the keepalive that keeps the mesh's alive."""
    mesh.mgr.docker("service", "create", "--detach", "--name", "idle", "--constraint", "node.hostname==h2",
                    "--label", "com.shoal.mesh.keepalive=true", "--publish", "30093:8080",
                    "busybox", PY, str(HERE / "replica.py"), "8080", "8081")
    wait_until(lambda: len(mesh.running("idle")) == 1, 30, what="idle running")
    wait_until(lambda: mesh.from_outside("tcp", mesh.addr(3), "30093", "1")[0], 20, what="idle through h3")
    task_pid = mesh.task_pid("idle")
    control = subprocess.Popen(["ip", "netns", "exec", mesh.hosts[3].name, PY, str(HERE / "replica.py"),
                                "30190", "30191"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert mesh.outside.run("sh", "-c", FORGETFUL).returncode == 0
        r = subprocess.run(["nsenter", "-t", str(task_pid), "-n", "sh", "-c", FORGETFUL], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: mesh.from_outside("tcp", mesh.addr(4), "30190", "1")[0], 20, what="the control server")
        idle = 15
        probes = [subprocess.Popen(["ip", "netns", "exec", mesh.outside.name, PY, str(HERE / "probe.py"), "idle",
                                    mesh.addr(i), str(port), str(idle)], stdout=subprocess.PIPE, text=True)
                  for i, port in ((3, 30093), (4, 30190))]
        # Keepalive is on, on both of the balancer's sockets: toward the client (h3's own namespace) and toward
        # the task (h3's ingress namespace).
        ingress = next(n for n in json.loads(mesh.mgr.docker("network", "inspect", "ingress").stdout))["Id"]
        ns = mesh.nodes[2].data_dir / "net" / "ns" / f"n-{ingress[:20]}"
        assert mesh.nodes[2].proc is not None
        daemon = mesh.nodes[2].proc.pid

        def keepalive_timers() -> tuple[str, str] | None:
            front = mesh.hosts[2].run("ss", "-tnoH", "state", "established", "( sport = :30093 )")
            # the namespace is bound in the daemon's mount namespace (ip netns exec made it one of its own)
            back = subprocess.run(["nsenter", "-t", str(daemon), "-m", "--", "nsenter", f"--net={ns}", "ss", "-tnoH",
                                   "state", "established", "( dport = :8080 )"], capture_output=True, text=True,
                                  timeout=30)
            if "timer:(keepalive" in front.stdout and "timer:(keepalive" in back.stdout:
                return None
            return front.stdout + front.stderr, back.stdout + back.stderr

        try:
            wait_until(lambda: keepalive_timers() is None, 10, what="keepalive timers on both legs")
        except AssertionError as e:
            raise AssertionError(f"{e}: {keepalive_timers()}") from None
        through_mesh, plain = (json.loads(p.communicate(timeout=idle + 40)[0]) for p in probes)
    finally:
        control.kill()
        control.wait()
        mesh.outside.run("nft", "delete", "table", "inet", "forgetful")
        mesh.mgr.docker("service", "rm", "idle")
    assert plain[0] is not None and plain[1] is None, plain  # the firewall does drop idle connections
    assert through_mesh[0] is not None and through_mesh[1] is not None, through_mesh
    assert through_mesh[0]["peer"] == through_mesh[1]["peer"]  # the same connection, not a new one


def test_a_task_told_to_stop_leaves_dns_and_the_vip_while_it_still_runs(mesh: Mesh) -> None:
    """No stale entries: scaled down, the task that goes is out of `tasks.<name>`, and gets no connection
    through the VIP, within moments of the scale-down, while its process still runs and still answers (it
    ignores SIGTERM and has a minute of grace): the answers follow the desired state, not the process."""
    mesh.mgr.docker("service", "create", "--detach", "--name", "drain", "--replicas", "3",
                    "--constraint", "node.labels.web==1", "--replicas-max-per-node", "1",
                    "--stop-grace-period", "60s", "--network", "appnet",
                    "busybox", PY, str(HERE / "replica.py"), "8080", "8081", "linger")
    wait_until(lambda: len(mesh.running("drain")) == 3, 60, what="drain 3/3")
    pid = mesh.task_pid("client")
    wait_until(lambda: set(mesh.in_task(pid, "resolve", "tasks.drain")) == mesh.ips("drain", "appnet"), 20,
               what="tasks.drain == the three replicas")
    vip = mesh.vip("drain", "appnet")
    mesh.mgr.docker("service", "scale", "--detach", "drain=2")
    victim = wait_until(lambda: next((t for t in mesh.tasks("drain")
                                      if t["DesiredState"] in ("shutdown", "remove")), None),
                        10, what="the scale-down committed")
    told = time.monotonic()
    nid = mesh.network_id("appnet")
    victim_ip = next(a.split("/")[0] for att in victim["NetworksAttachments"] if att["Network"]["ID"] == nid
                     for a in att["Addresses"])
    victim_pid = next(p for n in mesh.nodes if (p := n.command_pids().get(victim["ID"])))
    try:
        wait_until(lambda: victim_ip not in mesh.in_task(pid, "resolve", "tasks.drain"), 3,
                   what="the stopping task to leave tasks.drain")
        left_after = time.monotonic() - told
        answers = mesh.in_task(pid, "tcp", "drain", "8080", "9")
        assert all(a is not None for a in answers), answers
        assert victim_ip not in {ip for a in answers for ip in a["ips"]}, answers  # no connection for it
        assert len({ip for a in answers for ip in a["ips"]} & mesh.ips("drain", "appnet")) == 2
        # ... and all that while it still runs and answers, straight to its address.
        direct = mesh.in_task(pid, "tcp", victim_ip, "8080", "1")[0]
        assert direct is not None and victim_ip in direct["ips"]
        assert subprocess.run(["kill", "-0", str(victim_pid)]).returncode == 0
        assert left_after < 3, left_after
        assert mesh.in_task(pid, "resolve", "drain") == [vip]
    finally:
        # The replicas ignore SIGTERM: end them now rather than after their grace period.
        ids = {t["ID"] for t in mesh.tasks("drain")}
        mesh.mgr.docker("service", "rm", "drain")
        pids = [str(p) for n in mesh.nodes for tid, p in n.command_pids().items() if tid in ids]
        subprocess.run(["kill", "-9", *pids], check=False)


def test_only_healthy_tasks_are_answered(mesh: Mesh, tmp_path: Path) -> None:
    """A task that fails its health check leaves `tasks.<name>` and the VIP; its replacements, unhealthy from
    the start, never join; once the check passes again they come back."""
    sick = tmp_path / "sick"
    mesh.mgr.docker("service", "create", "--detach", "--name", "hc", "--replicas", "2",
                    "--constraint", "node.labels.web==1", "--replicas-max-per-node", "1", "--network", "appnet",
                    "--health-cmd", f"test ! -e {sick}", "--health-interval", "1s", "--health-retries", "2",
                    "--health-timeout", "10s", "busybox", PY, str(HERE / "replica.py"), "8080", "8081")
    pid = mesh.task_pid("client")
    try:
        wait_until(lambda: len(mesh.running("hc")) == 2 and len(ips := mesh.ips("hc", "appnet")) == 2
                   and set(mesh.in_task(pid, "resolve", "tasks.hc")) == ips, 60,
                   what="tasks.hc == the two healthy replicas")
        sick.touch()
        wait_until(lambda: mesh.in_task(pid, "resolve", "tasks.hc") == [], 30, what="no healthy replica left")
        assert mesh.in_task(pid, "resolve", "hc") == [mesh.vip("hc", "appnet")]  # the name stays, on its VIP
        assert mesh.in_task(pid, "tcp", "hc", "8080", "2") == [None, None]  # nothing behind the VIP
        sick.unlink()
        wait_until(lambda: len(mesh.running("hc")) == 2 and len(ips := mesh.ips("hc", "appnet")) == 2
                   and set(mesh.in_task(pid, "resolve", "tasks.hc")) == ips, 60,
                   what="tasks.hc with the two healthy replicas again")
        back = mesh.in_task(pid, "tcp", "hc", "8080", "4")
        assert all(a is not None for a in back) and {ip for a in back for ip in a["ips"]} & mesh.ips("hc", "appnet")
    finally:
        mesh.mgr.docker("service", "rm", "hc")


def test_dnsrr_service_name_answers_the_task_addresses_and_reaches_them(mesh: Mesh) -> None:
    """`--endpoint-mode dnsrr`: no VIP; the name resolves to the running tasks' own addresses, which the
    client connects to directly (across hosts)."""
    mesh.mgr.docker("service", "create", "--detach", "--name", "rr", "--replicas", "2", "--endpoint-mode", "dnsrr",
                    "--network", "appnet", "busybox", PY, str(HERE / "replica.py"), "8080", "8081")
    wait_until(lambda: len(mesh.running("rr")) == 2, 30, what="rr running")
    svc = json.loads(mesh.mgr.docker("service", "inspect", "rr").stdout)[0]
    assert not svc["Endpoint"].get("VirtualIPs")
    pid = mesh.task_pid("client")
    replicas = mesh.ips("rr", "appnet")
    wait_until(lambda: set(mesh.in_task(pid, "resolve", "rr")) == replicas, 20, what="rr -> its task addresses")
    assert set(mesh.in_task(pid, "resolve", "tasks.rr")) == replicas
    seen = set()
    for ip in replicas:
        (answer,) = mesh.in_task(pid, "tcp", ip, "8080", "1")
        assert answer is not None and ip in answer["ips"], answer
        seen.add(ip)
    assert seen == replicas
    mesh.mgr.docker("service", "scale", "--detach", "rr=1")
    wait_until(lambda: len(mesh.running("rr")) == 1 and set(mesh.in_task(pid, "resolve", "rr")) == mesh.ips(
        "rr", "appnet"), 30, what="rr -> the one task left")
    mesh.mgr.docker("service", "rm", "rr")
