"""The kernel routing mesh's pieces that need no cluster: the nftables scripts it writes are ones the kernel
takes (checked with `nft --check` in a namespace of their own), its link addresses stay in the link-local pool
and step around a host's own, and its DOCKER-USER exceptions are exactly the node's (a namespace with a chain
of that name standing for Docker's)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from shoal.net.kingress import LINK_POOL, KernelPort, _link_net, bridge_script, host_script, ns_script

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("unshare") is None,
                                reason="needs root, nft and unshare")

PORTS = [
    KernelPort("tcp", 30080, 8080, ("10.0.0.5", "10.0.0.6", "10.0.0.7"), False),
    KernelPort("udp", 30081, 8081, ("10.0.0.5",), False),
    KernelPort("tcp", 30091, 80, ("10.0.0.9",), True),
]


def _nft_check(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "-n", "nft", "--check", "-f", "-"], input=script, capture_output=True,
                          text=True, timeout=30)


@needs_root
@pytest.mark.parametrize("ports", [PORTS, PORTS[:1], PORTS[2:], []], ids=["mixed", "one", "local-only", "none"])
def test_every_script_is_one_the_kernel_takes(ports: list[KernelPort]) -> None:
    for script in (host_script("node1", "169.254.64.2", ports), ns_script("10.0.0.3", ports),
                   bridge_script("node1", "shlabc1000", "10.0.0.3", ports)):
        r = _nft_check(script)
        assert r.returncode == 0, (r.stderr, script)


def test_source_nat_follows_local_only() -> None:
    """A local-only port's flows keep the client's address: they are never marked for source NAT."""
    inner = ns_script("10.0.0.3", PORTS)
    lines = {ln.split(" dport ")[1].split()[0]: ln for ln in inner.splitlines() if " dport " in ln}
    assert "ct mark set 1 " in lines["30080"] and "ct mark set 1 " in lines["30081"]
    assert "ct mark set 2 " in lines["30091"]
    assert "ct mark 1 snat to 10.0.0.3" in inner
    bridge = bridge_script("node1", "shlabc1000", "10.0.0.3", PORTS)
    marked = {ln.split(" dport ")[1].split()[0] for ln in bridge.splitlines() if "ct mark set" in ln}
    assert marked == {"30080", "30081"}


def test_link_addresses_are_link_local_and_differ_per_attempt() -> None:
    nets = {_link_net("node1", a) for a in range(10)}
    assert len(nets) == 10
    assert all(n.prefixlen == 30 and n.subnet_of(LINK_POOL) for n in nets)
    assert all(n.subnet_of(ipaddress.IPv4Network("169.254.0.0/16")) for n in nets)
    assert _link_net("node1", 0) != _link_net("node2", 0)


DOCKER_USER = textwrap.dedent("""
    import asyncio, subprocess, sys
    from shoal.net.kingress import _docker_user

    def sh(*a):
        return subprocess.run(a, capture_output=True, text=True, check=True).stdout

    sh("iptables", "-N", "DOCKER-USER")
    sh("iptables", "-A", "DOCKER-USER", "-i", "eth9", "-j", "ACCEPT")  # the host's own rule
    asyncio.run(_docker_user("node1", [["-o", "shmx", "-j", "ACCEPT"], ["-i", "shmx", "-j", "ACCEPT"]]))
    asyncio.run(_docker_user("node1", [["-o", "shmx", "-j", "ACCEPT"], ["-i", "shmx", "-j", "ACCEPT"]]))
    asyncio.run(_docker_user("node2", [["-o", "shmy", "-j", "ACCEPT"]]))
    print(sh("iptables", "-S", "DOCKER-USER"))
    print("=====")
    asyncio.run(_docker_user("node1", []))
    print(sh("iptables", "-S", "DOCKER-USER"))
""")


@needs_root
@pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables")
def test_docker_user_exceptions_are_exactly_the_nodes() -> None:
    from shoal.net.links import node_token

    r = subprocess.run(["unshare", "-n", sys.executable, "-c", DOCKER_USER], capture_output=True, text=True,
                       timeout=60, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    added, removed = r.stdout.split("=====")
    one, two = f"shoal-mesh:{node_token('node1')}", f"shoal-mesh:{node_token('node2')}"
    rules = [ln for ln in added.splitlines() if ln.startswith("-A")]
    assert sum(one in ln for ln in rules) == 2  # written twice, present once
    assert sum(two in ln for ln in rules) == 1
    assert any("-i eth9" in ln for ln in rules)
    after = [ln for ln in removed.splitlines() if ln.startswith("-A")]
    assert not any(one in ln for ln in after)
    assert any(two in ln for ln in after) and any("-i eth9" in ln for ln in after)


LIFECYCLE = textwrap.dedent("""
    import asyncio, subprocess
    from shoal.net.kingress import KernelIngress, KernelPort, host_table

    def tables():
        return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout

    async def main():
        port = KernelPort("tcp", 30080, 80, ("10.0.0.5",), False)
        k = KernelIngress("node1")
        await k.program(None, "shlabc1000", "10.0.0.3", [port])
        print("written", host_table("node1") in tables())
        await k.program(None, "shlabc1000", "10.0.0.3", [])
        print("no port", host_table("node1") in tables())
        await k.program(None, "shlabc1000", "10.0.0.3", [port])
        again = KernelIngress("node1")  # the next run of the daemon, nothing published any more
        await again.close()
        print("next run", host_table("node1") in tables())

    asyncio.run(main())
""")


@needs_root
def test_the_nodes_table_goes_with_its_last_port_and_a_previous_runs_too() -> None:
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", LIFECYCLE], capture_output=True, text=True,
                       timeout=60, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["written True", "no port False", "next run False"], r.stdout
