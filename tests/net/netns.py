"""Hosts made from network namespaces on one machine, joined by a bridge standing for the physical network.

    with Lab() as lab:
        h1, h2 = lab.host("10.123.0.1/24"), lab.host("10.123.0.2/24")
        server = h2.serve_once("0.0.0.0", 7777); assert h1.fetch("10.123.0.2", 7777) == h2.name

Everything lives in namespaces the lab creates (the bridge too, in its own "wire" namespace), so nothing
touches the machine's own interfaces; closing the lab deletes the namespaces and with them every device.
Needs root (CAP_NET_ADMIN/CAP_SYS_ADMIN) and iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from types import TracebackType


def why_not() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespace tests need root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None or shutil.which("bridge") is None:
        return "iproute2 (ip, bridge) is not installed"
    probe = f"shoal-probe-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


@dataclass
class Host:
    lab: Lab
    name: str  # namespace name
    addr: str  # CIDR on eth0, the "physical" interface
    index: int

    def run(self, *cmd: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                              timeout=timeout, check=check)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return ip(*args, ns=self.name, check=check)

    def add_vxlan(self, vni: int, overlay_addr: str, peers: list[str], *, port: int = 4789) -> str:
        """A VXLAN device for `vni` over eth0 with the overlay address, flooding to `peers` (their eth0
        addresses) through all-zero FDB entries; learning off, as an orchestrator that knows every
        endpoint programs them."""
        dev = f"vxlan{vni}"
        self.ip("link", "add", dev, "type", "vxlan", "id", str(vni), "dstport", str(port), "local", self.ip_addr,
                "dev", "eth0", "nolearning")
        for p in peers:
            r = subprocess.run(["bridge", "-n", self.name, "fdb", "append", "00:00:00:00:00:00", "dev", dev,
                                "dst", p], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise RuntimeError(f"bridge fdb append: {r.stderr.strip()}")
        self.ip("addr", "add", overlay_addr, "dev", dev)
        self.ip("link", "set", dev, "up")
        return dev

    @property
    def ip_addr(self) -> str:
        return self.addr.split("/")[0]

    def serve_once(self, bind: str, port: int) -> subprocess.Popen[str]:
        """A TCP server in this host answering one connection with its namespace name; returns once it
        listens (it says so on stdout). Stop it with `.kill()` (the test's own process)."""
        code = ("import socket,sys\n"
                f"s=socket.create_server(({bind!r},{port}))\n"
                "print('ready',flush=True)\n"
                "c,_=s.accept()\n"
                f"c.sendall({self.name!r}.encode())\n"
                "c.close()\n")
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", code],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"server in {self.name} did not start: {proc.stderr.read() if proc.stderr else ''}")
        return proc

    def fetch(self, addr: str, port: int, timeout: float = 3.0) -> str | None:
        """Connect from this host to addr:port and read what the server says (None: unreachable)."""
        code = ("import socket\n"
                f"c=socket.create_connection(({addr!r},{port}),timeout={timeout})\n"
                "print(c.recv(100).decode())\n")
        r = self.run(sys.executable, "-c", code, timeout=timeout + 10)
        return r.stdout.strip() if r.returncode == 0 else None


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    hosts: list[Host] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.wire = f"shoal-{self.tag}-wire"

    def __enter__(self) -> Lab:
        self._add_ns(self.wire)
        ip("link", "add", "br0", "type", "bridge", ns=self.wire)
        ip("link", "set", "br0", "up", ns=self.wire)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("link", "set", "lo", "up", ns=name)

    def host(self, addr: str) -> Host:
        """A new host namespace with `eth0` (address `addr`) plugged into the wire bridge."""
        i = len(self.hosts) + 1
        h = Host(self, f"shoal-{self.tag}-h{i}", addr, i)
        self._add_ns(h.name)
        port = f"p{i}"
        ip("link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.wire, ns=h.name)
        ip("link", "set", port, "master", "br0", ns=self.wire)
        ip("link", "set", port, "up", ns=self.wire)
        ip("addr", "add", addr, "dev", "eth0", ns=h.name)
        ip("link", "set", "eth0", "up", ns=h.name)
        self.hosts.append(h)
        return h

    def close(self) -> None:
        for name in reversed(self.namespaces):
            ip("netns", "del", name, check=False)
        self.namespaces.clear()
