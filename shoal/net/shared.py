"""What the parts of a node's network agent share: the cluster state it last applied, its task sandboxes
(`Box`) and the lock under which they change.

The agent (shoal.net.agent) owns one `Shared` and hands it to its parts (overlays, VIP rules, the mesh, the
engine's bridges, container namespaces), each of which keeps its own state and reads or changes the shared
one only while the caller holds `lock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shoal.net.dns import DNSServer
from shoal.net.lb import KeepAlive
from shoal.net.links import ip_of
from shoal.net.state import NetState, SnapshotDirectory

NO_NS = Path("/nonexistent")  # the namespace of a container sandbox not (or no longer) held
DNS_ADDR = "127.0.0.11"  # a process task's DNS server, in its namespace


@dataclass
class Box:
    """A task's sandbox (or a plain container's, keyed `ctr-<container>`): its namespace, its networks and
    addresses in the task's order, and what serves it."""

    task_id: str
    ns: Path
    networks: list[str]  # network ids, in the task's order
    addrs: list[str]
    dns: DNSServer | None = None
    nft_script: str = ""
    container: bool = False  # a docker container's namespace (held at `ns` once it runs), not one of ours
    seen: bool = False  # its task has been in a snapshot (leaving it later means the task ended)
    pid: int = 0  # a container's: the process whose namespace `ns` holds
    # A container's: its VIP rules have been written (or never will be); its DNS answers wait for it.
    rules_in: asyncio.Event = field(default_factory=asyncio.Event)


class Shared:
    """The node, its last cluster state and its sandboxes; `boxes` and `by_ip` change under `lock`."""

    def __init__(self, node_id: str, addr: str, root: Path, *, upstreams: Sequence[str] = (),
                 keepalive: KeepAlive | None = None) -> None:
        self.node_id = node_id
        self.addr = addr
        self.root = Path(root)
        self.ns_dir = self.root / "ns"
        self.upstreams = list(upstreams)
        self.keepalive = keepalive or KeepAlive()
        self.directory = SnapshotDirectory(node_id)
        self.state = NetState()
        self.boxes: dict[str, Box] = {}
        self.by_ip: dict[str, Box] = {}  # a container's address -> its sandbox (who asks the gateway DNS)
        self.lock = asyncio.Lock()

    def resolv(self, task_id: str) -> Path:
        """The resolv.conf bound over the task's /etc/resolv.conf."""
        return self.ns_dir / f"t-{task_id}.resolv"

    def index(self, box: Box) -> None:
        """Known by its addresses (the gateway DNS answers it by them)."""
        for ip in box.addrs:
            self.by_ip[ip] = box

    def unindex(self, box: Box) -> None:
        """No longer known by its addresses (those another sandbox took since stay that one's)."""
        for ip in box.addrs:
            ip = ip_of(ip) if "/" in ip else ip
            if self.by_ip.get(ip) is box:
                del self.by_ip[ip]
