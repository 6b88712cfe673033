"""IPAM through the stock CLI on a real daemon: `swarm init --default-addr-pool --default-addr-pool-mask-length`
decides the subnets of overlay networks created without one; user subnets, gateways and ranges are kept."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from tests.cluster.conftest import _require_cli
from tests.support.managers import free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow]


def test_default_address_pool_and_mask_length_from_swarm_init(tmp_path: Path) -> None:
    _require_cli()
    node = ShoalNode(tmp_path / "node").start()
    try:
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}",
                    "--default-addr-pool", "10.123.0.0/16",
                    "--default-addr-pool", "10.124.0.0/16", "--default-addr-pool-mask-length", "26")
        info = json.loads(node.docker("info", "--format", "{{json .Swarm.Cluster}}").stdout)
        assert info["DefaultAddrPool"] == ["10.123.0.0/16", "10.124.0.0/16"] and info["SubnetSize"] == 26
        subnets = []
        for name in ("n1", "n2"):
            node.docker("network", "create", "-d", "overlay", name)
            (cfg,) = json.loads(node.docker("network", "inspect", name).stdout)[0]["IPAM"]["Config"]
            subnets.append(ipaddress.ip_network(cfg["Subnet"]))
        assert all(s.prefixlen == 26 and s.subnet_of(ipaddress.ip_network("10.123.0.0/16")) for s in subnets)
        assert not subnets[0].overlaps(subnets[1])
        node.docker("network", "create", "-d", "overlay", "--subnet", "192.168.77.0/24", "--gateway",
                    "192.168.77.254", "--ip-range", "192.168.77.128/25", "mine")
        (cfg,) = json.loads(node.docker("network", "inspect", "mine").stdout)[0]["IPAM"]["Config"]
        assert (cfg["Subnet"], cfg["Gateway"], cfg["IPRange"]) == ("192.168.77.0/24", "192.168.77.254",
                                                                  "192.168.77.128/25")
        # A VIP of a service on it comes from the range.
        node.docker("service", "create", "--detach", "--name", "s", "--network", "mine", "busybox", "sleep", "60")
        def vips() -> list[str]:
            svc = json.loads(node.docker("service", "inspect", "s").stdout)[0]
            return [v["Addr"] for v in svc["Endpoint"].get("VirtualIPs") or []]

        (vip,) = wait_until(vips, 20, what="the service's VIP")
        assert ipaddress.ip_interface(vip).ip in ipaddress.ip_network("192.168.77.128/25")
    finally:
        node.stop()


def test_published_ports_are_conflict_checked_and_assigned_from_30000(tmp_path: Path) -> None:
    _require_cli()
    node = ShoalNode(tmp_path / "node").start()
    try:
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")

        def published(name: str) -> list[int]:
            def ports() -> list[int]:
                svc = json.loads(node.docker("service", "inspect", name).stdout)[0]
                return [p["PublishedPort"] for p in svc["Endpoint"].get("Ports") or [] if p.get("PublishedPort")]
            return wait_until(ports, 20, what=f"{name}'s published ports")

        node.docker("service", "create", "--detach", "--name", "a", "--publish", "80", "busybox", "sleep", "60")
        node.docker("service", "create", "--detach", "--name", "b", "--publish", "80", "--publish", "81/udp",
                    "busybox", "sleep", "60")
        pa, pb = published("a"), published("b")
        assert all(30000 <= p <= 32767 for p in pa + pb) and len(set(pa + pb[:1])) == 2
        taken = pa[0]
        clash = node.docker("service", "create", "--detach", "--name", "c", "--publish", f"{taken}:90", "busybox",
                            "sleep", "60", check=False)
        assert clash.returncode != 0
        aid = json.loads(node.docker("service", "inspect", "a").stdout)[0]["ID"]
        assert (f"port '{taken}' is already in use by service 'a' ({aid}) as an ingress port") in clash.stderr
        node.docker("service", "create", "--detach", "--name", "h", "--publish",
                    "mode=host,published=31999,target=90", "busybox", "sleep", "60")
        hid = json.loads(node.docker("service", "inspect", "h").stdout)[0]["ID"]
        clash = node.docker("service", "create", "--detach", "--name", "d", "--publish", "31999:90", "busybox",
                            "sleep", "60", check=False)
        assert f"port '31999' is already in use by service 'h' ({hid}) as a host-published port" in clash.stderr
        node.docker("service", "rm", "a")
        node.docker("service", "create", "--detach", "--name", "c", "--publish", f"{taken}:90", "busybox",
                    "sleep", "60")  # free again once its service is gone
        assert published("c") == [taken]
    finally:
        node.stop()
