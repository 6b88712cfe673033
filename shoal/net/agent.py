"""The per-node network agent: overlays, task sandboxes, DNS, VIP rules and the routing mesh on one node.

Fed by a `NetFeed` (cluster state as snapshots; see shoal.net.state), it keeps the kernel in line with it. The
agent applies each snapshot and keeps the task sandboxes; its parts do the rest, sharing the cluster state,
the sandboxes and one lock (shoal.net.shared):

- overlays: a namespace with a bridge and a VXLAN device per network, remote endpoints programmed
  (shoal.net.overlay; device names and marks in shoal.net.links);
- VIP rules in each sandbox's namespace (shoal.net.vips);
- the routing mesh and host-mode ports of process tasks: balancers on the node (shoal.net.mesh);
- with the docker executor: overlays are bridge networks of the engine with DNS on their gateways
  (shoal.net.engine), and containers' namespaces are held by handles of the agent's own
  (shoal.net.containers). Plain containers on attachable networks are followed by shoal.net.plain.

Task sandboxes (process executor). A task with networks runs in its own namespace (`<root>/ns/t-<task>`):
one veth per network (`eth<i>` inside, with the task's address and derived MAC; the other end on the
network's bridge), a default route through the first network that is not internal, its VIP rules, and a DNS
server at 127.0.0.11:53 (UDP and TCP) bound inside the namespace and served by this process, its view the
task's networks (not ingress); names it does not know go upstream, unless every network of the task is
internal. The task's resolv.conf (bound over /etc/resolv.conf when it starts) points there.

A sandbox whose task has ended (it left the snapshot) is no longer programmed, and a container's handle is
let go then.

Restart: namespaces, veths and task processes outlive the daemon; a new agent adopts the sandboxes it finds
(DNS listeners and VIP rules again) and recreates each network's VXLAN device (its entries are reprogrammed
from the first snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.errors import ShoalError, TemporaryError
from shoal.host import ipcmd, nsutil
from shoal.model.objects import Network, Task
from shoal.net.containers import ContainerNetworks, Containers
from shoal.net.dns import DNSServer
from shoal.net.engine import EngineBridges
from shoal.net.lb import KeepAlive
from shoal.net.links import ip_of, mac_of, network_mtu
from shoal.net.mesh import Mesh
from shoal.net.overlay import LocalNet, Overlays
from shoal.net.plain import PlainContainers
from shoal.net.shared import DNS_ADDR, NO_NS, Box, Shared
from shoal.net.state import LatestFeed, NetFeed, NetState, SnapshotDirectory
from shoal.net.vips import VipRules
from shoal.tasks import cancel_and_wait

if TYPE_CHECKING:
    import aiodocker

log = logging.getLogger(__name__)

KNOWN_NETWORK_TIMEOUT = 10.0  # seconds an attach waits for a network to reach this node's feed


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What an executor needs to run a task attached to its networks."""

    netns: str
    resolv_conf: str


class NetworkAgent:
    def __init__(self, node_id: str, addr: str, root: Path, feed: NetFeed, *,
                 dns_upstreams: Sequence[str] = (), keepalive: KeepAlive | None = None,
                 engine_host: str | None = None) -> None:
        self.shared = Shared(node_id, addr, root, upstreams=dns_upstreams, keepalive=keepalive)
        self.node_id = node_id
        self.addr = addr
        self.root = self.shared.root
        self.ns_dir = self.shared.ns_dir
        self.feed = LatestFeed(feed)
        self.engine_host = engine_host  # docker executor: overlays are bridges of that engine (shoal.net.engine)
        self.ready = asyncio.Event()  # the first snapshot is in
        self.engine = EngineBridges(self.shared, engine_host) if engine_host is not None else None
        self.overlays = Overlays(self.shared, self.engine)
        self.vips = VipRules(self.shared)
        self.mesh = Mesh(self.shared, self.overlays, self.engine, self.gc_networks)
        self.containers = Containers(self.shared, self.overlays, self.vips)
        self._task: asyncio.Task[None] | None = None
        self._leftovers: asyncio.Task[None] | None = None  # the collection of an earlier run's engine networks
        self._changed = asyncio.Event()
        # Plain containers on attachable networks (docker executor; shoal.net.plain): the attacher asks the
        # leader for their addresses (shoal.node.attacher, set by shoal.node.network).
        self.attacher: Any = None
        self.plain: PlainContainers | None = None

    @property
    def state(self) -> NetState:
        """The cluster state last applied."""
        return self.shared.state

    @property
    def directory(self) -> SnapshotDirectory:
        """Who serves which name and VIP, as the last applied state has it."""
        return self.shared.directory

    @property
    def lock(self) -> asyncio.Lock:
        """Held while sandboxes and networks change; the methods below marked "under `lock`" need it held."""
        return self.shared.lock

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.ns_dir.mkdir(parents=True, exist_ok=True)
        await self._adopt()
        self.feed.start()
        self._task = asyncio.create_task(self._run(), name="network-agent")
        if self.engine_host is not None:
            self.plain = PlainContainers(self, release=self._release_attachment)
            self.plain.start()
            self._leftovers = asyncio.create_task(self._collect_leftover_networks(), name="network-leftovers")

    async def _release_attachment(self, attachment_id: str) -> None:
        if self.attacher is not None:
            await self.attacher.detach(attachment_id)

    async def close(self) -> None:
        """Stop serving (DNS, balancers); namespaces stay for the tasks that keep running (containers' are
        not held any more: a stopped daemon keeps none alive)."""
        for t in (self._task, self._leftovers):
            if t is not None:
                await cancel_and_wait(t)
        self._task = self._leftovers = None
        await self.feed.close()
        if self.plain is not None:
            await self.plain.close()
        await self.mesh.close()
        for box in self.shared.boxes.values():
            if box.dns is not None:
                await box.dns.close()
                box.dns = None
            if box.container:
                await self.containers.release_netns(box)  # held again by the next agent, once it sees it running
        if self.engine is not None:
            await self.engine.close()

    async def _run(self) -> None:
        while True:
            state = await self.feed.next()
            try:
                async with self.shared.lock:
                    await self._apply(state)
            except asyncio.CancelledError:
                raise
            except ShoalError as e:  # an expected failure (the engine, a command): one line, the next try follows
                log.warning("network agent: applying cluster state %d failed: %s", state.version, e.message)
            except Exception:
                log.exception("network agent: applying cluster state %d failed", state.version)
            self.ready.set()
            self._changed.set()

    async def synced(self, version: int, timeout: float = 10.0) -> bool:
        """Wait until a snapshot of store version `version` (or later) has been applied."""
        async with asyncio.timeout(timeout):
            while self.state.version < version:
                self._changed.clear()
                await self._changed.wait()
        return True

    # --- applying a snapshot --------------------------------------------------------------------------

    async def _apply(self, state: NetState) -> None:
        self.shared.state = state
        self.shared.directory.update(state)
        await self.overlays.update()
        for box in list(self.shared.boxes.values()):
            if await self._ended(box):
                continue
            await self.vips.program(box)
        await self.mesh.program_ingress()
        await self.mesh.program_host_ports()

    async def _ended(self, box: Box) -> bool:
        """Has the box's task ended (it was in a snapshot and left)? Its namespace is not entered again, and
        a container's handle is let go. Plain containers (shoal.net.plain) are not tasks: engine events end
        theirs."""
        if box.task_id.startswith("ctr-"):
            return False
        if box.task_id in self.state.tasks:
            box.seen = True
            return False
        if not box.seen:
            return False  # not in a snapshot yet: the feed lags behind the assignment
        if box.container and box.ns != NO_NS:
            await self.containers.release_netns(box)
        box.rules_in.set()
        return True

    async def _known_network(self, net_id: str) -> Network:
        deadline = asyncio.get_running_loop().time() + KNOWN_NETWORK_TIMEOUT
        while net_id not in self.state.networks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TemporaryError(f"network {net_id} is not known on this node yet")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return self.state.networks[net_id]

    # --- networks and sandboxes for plain containers (shoal.net.plain), under `lock` -----------------------

    async def ensure_network(self, net: Network) -> LocalNet:
        """The overlay `net` on this node (with the docker executor: its engine network), made when missing."""
        return await self.overlays.ensure(net)

    async def gc_networks(self) -> None:
        """The overlays no sandbox is on go (the ingress network stays while the mesh publishes a port)."""
        if self.plain is not None and self.plain.inflight:
            # A plain container's create or connect is between making its engine network and recording its
            # box: that network looks unused now and must not go (the next collection finds it used).
            return
        keep = {n for b in self.shared.boxes.values() for n in b.networks}
        ingress = self.state.ingress
        if ingress is not None and self.mesh.publishing:
            keep.add(ingress.id)
        await self.overlays.gc(keep)

    def sandbox(self, key: str) -> Box | None:
        """The sandbox of task (or plain container key) `key`, if any."""
        return self.shared.boxes.get(key)

    def container_sandbox(self, key: str) -> Box:
        """The container sandbox `key`, made (with no networks, not held) when missing."""
        box = self.shared.boxes.get(key)
        if box is None:
            box = self.shared.boxes[key] = Box(key, NO_NS, [], [], container=True)
        return box

    def readdress(self, box: Box, networks: list[str], addrs: list[str]) -> None:
        """The sandbox is on `networks` with `addrs` (IPv4 addresses) now: the gateway DNS answers it by them,
        and its VIP rules are written anew."""
        self.shared.unindex(box)
        box.networks, box.addrs, box.nft_script = networks, addrs, ""
        self.shared.index(box)

    async def remove_sandbox(self, box: Box) -> None:
        """A container sandbox goes: its namespace is let go, its addresses forgotten."""
        del self.shared.boxes[box.task_id]
        await self.containers.release_netns(box)
        self.shared.unindex(box)

    async def program_vips(self, box: Box) -> None:
        """The sandbox's VIP rules as the cluster state has them (once its container runs)."""
        await self.vips.program(box)

    async def hold_netns(self, box: Box, pid: int, still_running: Callable[[], Awaitable[bool]] | None) -> bool:
        """Hold the namespace of the container of process `pid` for `box` (see Containers.hold_netns)."""
        return await self.containers.hold_netns(box, pid, still_running)

    async def release_netns(self, box: Box) -> None:
        """Let go of a container sandbox's namespace handle."""
        await self.containers.release_netns(box)

    def engine_client(self) -> aiodocker.Docker:
        """The engine's aiodocker client (docker executor only)."""
        if self.engine is None:
            raise RuntimeError("this network agent has no engine (not the docker executor)")
        return self.engine.client()

    # --- containers of the docker executor ----------------------------------------------------------------

    async def attach_container(self, task: Task) -> ContainerNetworks | None:
        """Engine networks for the task's overlays (made when missing) and how to connect its container."""
        if not task.networks:
            return None
        nets = [await self._known_network(a.network_id) for a in task.networks]
        async with self.shared.lock:
            return await self.containers.attach(task, nets)

    async def container_started(self, task: Task, pid: int,
                                still_running: Callable[[], Awaitable[bool]] | None = None) -> None:
        """The container runs (`pid`, as the engine reported it): hold its namespace, then its VIP rules in it.
        `still_running` asks the engine again whether `pid` is the container's process (see `hold_netns`)."""
        if not task.networks or pid <= 0:
            return
        async with self.shared.lock:
            await self.containers.started(task, pid, still_running)

    async def container_stopped(self, task_id: str) -> None:
        """The task's container exited: let its namespace go (a task's container never starts again)."""
        async with self.shared.lock:
            await self.containers.stopped(task_id)

    # --- sandboxes --------------------------------------------------------------------------------------

    def _box_ns(self, task_id: str) -> Path:
        return self.ns_dir / f"t-{task_id}"

    async def attach_process(self, task: Task) -> Sandbox | None:
        """A network namespace for `task`, attached to its networks with its addresses (idempotent)."""
        if not task.networks:
            return None
        nets = [await self._known_network(a.network_id) for a in task.networks]
        async with self.shared.lock:
            box = self.shared.boxes.get(task.id)
            if box is None:
                box = await self._create_box(task, nets)
            await self.mesh.program_host_ports()
            return Sandbox(netns=str(box.ns), resolv_conf=str(self.shared.resolv(task.id)))

    def _meta(self, task_id: str) -> Path:
        return self.ns_dir / f"t-{task_id}.json"

    async def _create_box(self, task: Task, nets: list[Network]) -> Box:
        ns = self._box_ns(task.id)
        await ipcmd.delete_netns(ns)  # a half-made one from before a crash
        await ipcmd.create_netns(ns)
        box = Box(task.id, ns, [n.id for n in nets], [])
        try:
            routed = False
            for i, (att, net) in enumerate(zip(task.networks, nets, strict=True)):
                ln = await self.overlays.ensure(net)
                if not att.addresses:
                    raise TemporaryError(f"task {task.id} has no address on network {net.name}")
                cidr = att.addresses[0]
                box.addrs.append(cidr)
                mtu = network_mtu(net)
                host_if = f"v{task.id[:11]}{i}"
                await ipcmd.ip_batch([
                    f"link add {host_if} mtu {mtu} type veth peer name eth{i} netns {ns}",
                    f"link set {host_if} master br0",
                    f"link set {host_if} up",
                ], netns=str(ln.ns))
                lines = [f"link set eth{i} address {mac_of(ip_of(cidr))} mtu {mtu}", f"addr add {cidr} dev eth{i}",
                         f"link set eth{i} up"]
                if not routed and not net.spec.internal:
                    lines.append(f"route add default via {ln.gateway} dev eth{i}")
                    routed = True
                await ipcmd.ip_batch(lines, netns=str(ns))
            self.shared.resolv(task.id).write_text(f"nameserver {DNS_ADDR}\noptions ndots:0\n")
            await self._serve_box(box)
            self._meta(task.id).write_text(json.dumps({"networks": box.networks, "addrs": box.addrs}))
        except BaseException:
            await self._drop_box(box)
            raise
        self.shared.boxes[task.id] = box
        return box

    async def _serve_box(self, box: Box) -> None:
        nets = [self.state.networks.get(n) for n in box.networks]
        view = [n.id for n in nets if n is not None and not n.spec.ingress]
        internal_only = all(n is not None and (n.spec.internal or n.spec.ingress) for n in nets)
        dns = DNSServer(self.directory, view, upstreams=[] if internal_only else self.shared.upstreams)
        udp = nsutil.socket_in(str(box.ns), socket.AF_INET, socket.SOCK_DGRAM)
        tcp = nsutil.socket_in(str(box.ns), socket.AF_INET, socket.SOCK_STREAM)
        try:
            await dns.start_on(udp, tcp, (DNS_ADDR, 53))
        except BaseException:
            udp.close()
            tcp.close()
            raise
        box.dns = dns
        box.nft_script = ""
        await self.vips.program(box)

    async def detach(self, task_id: str) -> None:
        """Remove the task's sandbox (idempotent; also for tasks this agent never saw)."""
        async with self.shared.lock:
            box = self.shared.boxes.pop(task_id, None) or Box(task_id, self._box_ns(task_id), [], [])
            if box.container:
                await self.containers.release_netns(box)
            else:
                await ipcmd.delete_netns(self.containers.handle(task_id))  # a container's, from before a restart
            self.shared.unindex(box)
            await self._drop_box(box)
            await self.mesh.program_host_ports()
            await self.gc_networks()

    async def _drop_box(self, box: Box) -> None:
        if box.dns is not None:
            await box.dns.close()
            box.dns = None
        # The veth pairs go with the namespace; their bridge ends with them.
        if not box.container:
            await ipcmd.delete_netns(box.ns)
        for p in (self.shared.resolv(box.task_id), self._meta(box.task_id)):
            p.unlink(missing_ok=True)

    async def _adopt(self) -> None:
        for handle in sorted(self.ns_dir.glob("c-*")):
            await ipcmd.delete_netns(handle)  # containers' namespaces are held again once seen running
        for meta in sorted(self.ns_dir.glob("t-*.json")):
            task_id = meta.name[2:-5]
            ns = self._box_ns(task_id)
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            if not ipcmd.is_netns(ns):
                meta.unlink(missing_ok=True)
                continue
            self.shared.boxes[task_id] = Box(task_id, ns, list(data.get("networks", [])), list(data.get("addrs", [])))
        if self.shared.boxes:
            asyncio.get_running_loop().create_task(self._readopt(), name="network-adopt")

    async def _collect_leftover_networks(self) -> None:
        """Once the first snapshot is applied: engine networks an earlier run of this node left (it was killed
        while holding them) that no overlay, sandbox or plain container of this run needs go."""
        await self.ready.wait()
        if self.engine is None:
            return
        async with self.shared.lock:
            # Under the lock overlays are made under; one this run made or took over (`claimed`) is its own
            # to collect, when unused, as any other.
            keep = set(self.overlays.claimed) | {n for b in self.shared.boxes.values() for n in b.networks}
            if self.plain is not None:
                keep |= {nid for r in self.plain.records.values() for nid, _c in r.attachments.values()}
                keep |= {nid for nets in self.plain.deferred.values() for nid in nets}
            await self.engine.collect_leftovers(keep, dict(self.state.networks))

    async def _readopt(self) -> None:
        """Once the first snapshot is in: networks, DNS and VIP rules of the adopted sandboxes again."""
        await self.ready.wait()
        async with self.shared.lock:
            for box in list(self.shared.boxes.values()):
                try:
                    for nid in box.networks:
                        net = self.state.networks.get(nid)
                        if net is not None:
                            await self.overlays.ensure(net)
                    if box.dns is None:
                        await self._serve_box(box)
                except Exception:
                    log.exception("re-adopting the sandbox of task %s failed", box.task_id)
