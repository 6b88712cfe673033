"""Two hosts (network namespaces on one bridge) reach each other over a VXLAN device with a VNI; a host on
another VNI does not hear them."""

from __future__ import annotations

import pytest

from tests.net.netns import Host, Lab, why_not

reason = why_not()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


def reach(src: Host, dst: Host, addr: str) -> bool:
    """Can `src` open a TCP connection to `dst`'s server at `addr`? (and it is really `dst` answering)"""
    server = dst.serve_once("0.0.0.0", 7777)
    try:
        got = src.fetch(addr, 7777, timeout=2.0)
        return got == dst.name
    finally:
        server.kill()
        server.wait()


def test_namespaces_reach_each_other_over_a_vxlan_vni() -> None:
    with Lab() as lab:
        h1, h2, h3 = lab.host("192.168.240.1/24"), lab.host("192.168.240.2/24"), lab.host("192.168.240.3/24")
        assert reach(h1, h2, h2.ip_addr), "the underlay itself does not work"
        under = [h.ip_addr for h in (h1, h2, h3)]
        h1.add_vxlan(4242, "10.242.0.1/24", [a for a in under if a != h1.ip_addr])
        h2.add_vxlan(4242, "10.242.0.2/24", [a for a in under if a != h2.ip_addr])
        h3.add_vxlan(4243, "10.242.0.3/24", [a for a in under if a != h3.ip_addr])  # another network
        assert reach(h1, h2, "10.242.0.2")
        assert reach(h2, h1, "10.242.0.1")
        link = h1.ip("-d", "link", "show", "vxlan4242").stdout
        assert "vxlan id 4242" in link and "dstport 4789" in link
        assert not reach(h1, h3, "10.242.0.3"), "a different VNI must not carry the traffic"


def test_lab_cleans_up_its_namespaces() -> None:
    import subprocess

    with Lab() as lab:
        lab.host("192.168.241.1/24")
        names = list(lab.namespaces)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)
