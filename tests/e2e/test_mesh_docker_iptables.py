"""The kernel routing mesh on a host where Docker's own iptables rules run.

The test run's dockerd leaves iptables alone (`--iptables=false`); a host's dockerd does not: it sets the
FORWARD policy to DROP and accepts only what it knows, so a DNATed flow into Shoal's ingress bridge passes
only through the node's DOCKER-USER exception. Here a private dockerd with iptables on runs in a network
namespace standing for the host (its tables are that namespace's, not this machine's), a `shoal daemon
--executor docker` beside it, and a client in another namespace reaches a published port from outside: the
kernel's rule counts the connection, the container answers. Leaving removes the node's table and its
exception, and leaves Docker's chains as they were.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.dockerd import DockerdUnavailable, ensure_test_image, start_dockerd, stop_dockerd
from tests.e2e.shoal_docker import ShoalDocker
from tests.support.managers import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

SERVE = ("mkdir -p /www && echo kernel-mesh-ok > /www/index.html && exec httpd -f -p 8080 -h /www")


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=check)


@pytest.fixture
def host() -> Iterator[tuple[str, str, str]]:
    """Two namespaces on a veth pair: (the host's, the client's, the host's address)."""
    tag = secrets.token_hex(3)
    h, c = f"shkh-{tag}", f"shkc-{tag}"
    third = int(tag[:2], 16)
    sh("ip", "netns", "add", h)
    sh("ip", "netns", "add", c)
    try:
        sh("ip", "-n", h, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", c)
        sh("ip", "-n", h, "addr", "add", f"10.236.{third}.1/24", "dev", "eth0")
        sh("ip", "-n", c, "addr", "add", f"10.236.{third}.2/24", "dev", "eth0")
        for ns in (h, c):
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # A host that did not forward before Docker: dockerd turns forwarding on and sets FORWARD to DROP.
        sh("ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        yield h, c, f"10.236.{third}.1"
    finally:
        sh("ip", "netns", "del", c, check=False)
        sh("ip", "netns", "del", h, check=False)


def test_the_kernel_mesh_passes_dockers_forward_policy(host: tuple[str, str, str]) -> None:
    from shoal.net.kingress import host_table
    from shoal.net.links import node_token

    h, c, addr = host
    in_host = ("nsenter", f"--net=/run/netns/{h}")
    try:
        engine = start_dockerd(Path(f"/run/shoal-kfw-{secrets.token_hex(4)}"), prefix=in_host,
                               extra_args=("--iptables=true",))
    except DockerdUnavailable as e:
        pytest.skip(str(e))
    base = Path(tempfile.mkdtemp(prefix="kfw", dir="/tmp"))
    node = ShoalDocker(base, f"unix://{engine.base / 'docker.sock'}", hostname="kfw", prefix=in_host,
                       extra_args=("--dns-upstream", "none"))
    try:
        image = ensure_test_image(node.engine_url)

        def iptables(*args: str) -> str:
            return sh(*in_host, "iptables", *args).stdout

        assert "-P FORWARD DROP" in iptables("-S", "FORWARD")  # Docker's policy: what the exception is for
        node.start()
        node.docker("swarm", "init", "--advertise-addr", addr, "--listen-addr", f"{addr}:{free_port()}")
        nid = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        port = 30000 + secrets.randbelow(2000)
        node.docker("service", "create", "--detach", "--name", "web", "--publish", f"{port}:8080",
                    "--no-resolve-image", image, "sh", "-c", SERVE)

        def fetch() -> str:
            r = sh("ip", "netns", "exec", c, sys.executable, "-c", "import sys, urllib.request as u; sys.stdout.write("
                   f"u.urlopen('http://{addr}:{port}/', timeout=3).read().decode())", check=False)
            return r.stdout.strip()

        def counted() -> int | None:
            """The kernel rule's packet count for the port (None: no rule for it yet)."""
            table = sh(*in_host, "nft", "list", "table", "ip", host_table(nid), check=False).stdout
            m = re.search(rf"dport {port} counter packets (\d+)", table)
            return int(m.group(1)) if m else None

        # The balancer holds the port from the start and serves until the task's address reaches the kernel's
        # rule; only a connection made once the rule is in place proves the kernel path.
        assert wait_until(lambda: counted() is not None, 90, what="the kernel's rule for the published port")
        before = counted()
        assert before is not None
        assert wait_until(lambda: fetch() == "kernel-mesh-ok", 60, what="the published port from outside")
        after = counted()
        assert after is not None and after > before, (before, after)  # the kernel carried it
        tag = f"shoal-mesh:{node_token(nid)}"
        assert tag in iptables("-S", "DOCKER-USER")

        node.docker("swarm", "leave", "--force")
        assert sh(*in_host, "nft", "list", "table", "ip", host_table(nid), check=False).returncode != 0
        assert tag not in iptables("-S", "DOCKER-USER")
        assert "-P FORWARD DROP" in iptables("-S", "FORWARD") and "-j DOCKER-USER" in iptables("-S", "FORWARD")
    finally:
        node.stop()
        try:
            import docker

            client = docker.DockerClient(base_url=node.engine_url, timeout=60)
            for ctr in client.api.containers(all=True):
                client.api.remove_container(ctr["Id"], force=True)
            client.close()
        finally:
            stop_dockerd(engine)
            subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
            sh("rm", "-rf", str(base), check=False)
