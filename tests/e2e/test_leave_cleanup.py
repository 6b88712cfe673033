"""A docker-executor node on a real, private dockerd gives the host back: `docker swarm leave --force` removes
its containers, engine networks, bridges, VXLAN devices, nftables tables, mounts, processes and files. And
`docker events` on it shows the engine's container events beside the swarm's, as a Swarm node does."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import docker
import pytest

from tests.e2e.shoal_docker import ShoalDocker, swarm_node
from tests.support.host_state import mounts_under, nft_tables, processes_naming
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def node(dockerd: str, test_image: str) -> Iterator[ShoalDocker]:
    with swarm_node(dockerd, "lc", "leaver", init=False) as n:  # the test inits: it looks at the host before
        yield n


def _links() -> dict[int, str]:
    """ifindex -> name of the host's links (an ifindex is not reused soon, unlike a name: other nodes on this
    host may make a bridge of the same name for their own overlay with the same VNI)."""
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    return {int(x["ifindex"]): str(x["ifname"]) for x in json.loads(out)}


def test_leave_force_removes_everything_the_node_created(node: ShoalDocker, dockerd: str, test_image: str) -> None:
    eng = docker.DockerClient(base_url=dockerd, timeout=60)
    daemon_pid = node.proc.pid if node.proc is not None else 0
    tables0 = nft_tables()
    first_index = max(_links())
    node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:0")
    nid = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    node.docker("network", "create", "-d", "overlay", "lcnet")
    vni = node.docker("network", "inspect", "lcnet", "--format",
                      '{{index .Options "com.docker.network.driver.overlay.vxlanid_list"}}').stdout.strip()
    assert vni.isdigit(), vni
    node.docker("secret", "create", "lcsecret", "-", input=b"s3cret")
    node.docker("service", "create", "-d", "--no-resolve-image", "--name", "lcweb", "--replicas", "2",
                "--network", "lcnet", "--secret", "lcsecret", "--publish", "published=0,target=80",
                "--stop-grace-period", "1s", test_image, "sleep", "600")

    def running() -> bool:
        out = node.docker("service", "ps", "lcweb", "--filter", "desired-state=running", "--format",
                          "{{.CurrentState}}").stdout.split("\n")
        return len([s for s in out if s.startswith("Running")]) == 2

    # A local-only published port: the node adds host-wide TPROXY rules (an nftables table, an ip rule).
    node.docker("service", "create", "-d", "--no-resolve-image", "--name", "lclocal", "--label",
                "com.shoal.mesh.local-only=true", "--publish", "published=0,target=81", "--stop-grace-period", "1s",
                test_image, "sleep", "600")
    wait_until(running, 90, what="two running lcweb tasks")
    wait_until(lambda: "table ip shoal_mesh" in nft_tables(), 60, what="the local-only mesh rules")
    # The kernel mesh (the host forwards): a table of the node's, which leaving removes (checked below).
    from shoal.net.kingress import host_table

    wait_until(lambda: f"table ip {host_table(nid)}" in nft_tables(), 60, what="the kernel mesh's table")
    label = {"label": f"com.shoal.node.id={nid}"}
    wait_until(lambda: len(eng.containers.list(all=True, filters=label, ignore_removed=True)) == 3, 60,
               what="three containers")
    assert eng.networks.list(filters=label), "the overlay became an engine network"
    assert mounts_under(node.data_dir), "the secrets are on tmpfs mounts"
    from shoal.net.links import host_bridge_name, host_vxlan_name

    names = (host_bridge_name(nid, int(vni)), host_vxlan_name(nid, int(vni)))  # this node's own names
    bridge = [i for i, name in _links().items() if name == names[0]]
    assert bridge, "the overlay's bridge is on the host"
    # This node's devices: the bridge and VXLAN device it made, and the host ends of its containers' veths.
    ours = {i for i, name in _links().items() if name in names and i > first_index}
    veths = set()
    for c in eng.containers.list(filters=label):
        pid = int(c.attrs["State"]["Pid"])
        out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "link"], capture_output=True, text=True,
                             check=True).stdout
        veths |= {int(x["link_index"]) for x in json.loads(out) if "link_index" in x}  # the peers' ifindex
    veths = {i for i in veths if i in _links() and _links()[i].startswith("veth")}
    assert veths, "the tasks' veths are in the host's namespace"
    ours |= veths

    node.docker("swarm", "leave", "--force")

    assert eng.containers.list(all=True, filters=label) == []
    assert eng.networks.list(filters=label) == []
    assert mounts_under(node.data_dir) == []
    assert {i: n for i, n in _links().items() if i in ours} == {}
    assert {t for t in nft_tables() - tables0 if "shoal" in t and "shoal_mesh" not in t} == set()
    if not any(x.startswith("shl") for x in _links().values()):  # the TPROXY rules are shared by the host's nodes
        assert "table ip shoal_mesh" not in nft_tables()
        assert "23297" not in subprocess.run(["ip", "rule"], capture_output=True, text=True).stdout
    assert [p for p in processes_naming(node.data_dir) if p != daemon_pid] == []
    left = sorted(str(p.relative_to(node.data_dir)) for p in node.data_dir.rglob("*"))
    assert left == [], left
    eng.close()


def test_events_on_a_docker_executor_manager_include_the_engines_container_events(node: ShoalDocker,
                                                                                 test_image: str) -> None:
    t0 = time.time()
    node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:0")
    sid = node.docker("service", "create", "-d", "--no-resolve-image", "--name", "evsvc", "--stop-grace-period",
                      "1s", test_image, "sleep", "600").stdout.strip()

    def events() -> list[tuple[int, str]]:
        out = node.docker("events", "--since", f"{t0:.3f}", "--until", f"{time.time():.3f}", "--format",
                          "{{.TimeNano}} {{.Type}} {{.Action}} "
                          "{{index .Actor.Attributes \"com.docker.swarm.service.id\"}}{{.Actor.ID}}",
                          timeout=30).stdout.splitlines()
        return [(int(t), rest) for t, _, rest in (ln.partition(" ") for ln in out)]

    def started() -> list[tuple[int, str]]:
        out = events()
        return out if any(x.startswith("container start " + sid) for _, x in out) else []

    wait_until(started, 60, interval=0.5, what="the service's container started, in the engine's events")
    # A swarm event caused after the container's start: the merged stream must put it after the engine's event
    # (two streams sent one after the other would not), and the whole stream is in time order.
    node.docker("service", "update", "-d", "--label-add", "seen=start", "evsvc")

    def updated() -> list[tuple[int, str]]:
        out = events()
        return out if any(x.startswith("service update " + sid) for _, x in out) else []

    merged = wait_until(updated, 60, interval=0.5, what="the service update in the events")
    lines = [x for _, x in merged]
    assert any(x.startswith("service create " + sid) for x in lines), lines
    first_start = next(i for i, x in enumerate(lines) if x.startswith("container start " + sid))
    update = next(i for i, x in enumerate(lines) if x.startswith("service update " + sid))
    assert first_start < update, lines
    assert [t for t, _ in merged] == sorted(t for t, _ in merged), merged  # in time order
