"""The routing mesh and host-mode ports of process tasks on the node.

Every port published in ingress mode is held by a user-space balancer on the node (0.0.0.0), and where the
node's namespace forwards and its ingress network has a namespace of its own, the kernel carries what comes
from other hosts (shoal.net.kingress: nftables DNAT towards the task, no proxy). The balancer sends each
connection (or UDP flow) it takes to a serving task's ingress address, from this node's own ingress address
inside the ingress network's namespace, so replies come back through the tunnel. It serves clients on the node
itself, nodes that do not forward, the docker executor, and services that ask for what only a proxy can do,
as service labels: `com.shoal.mesh.proxy-protocol=true` (a PROXY v2 header with the real client address
first) and `com.shoal.mesh.keepalive=true` (TCP keepalive probes on both legs, timed by `shoal daemon
--mesh-keepalive`). `com.shoal.mesh.local-only=true` sends only to tasks on the receiving node, from the
client's own address (in the kernel: no source NAT; in the balancer: a transparent socket; a client on the
node's loopback is sent from the node's ingress address instead).

Host-mode ports of a process task in its own namespace: such a task listens inside its namespace, so the node
forwards its host-mode ports to it: a balancer with this one backend on the node's 0.0.0.0:<published>,
connecting from inside the task's namespace to its address (as docker-proxy does for a container). The task
sees the connection come from its own address; the service's PROXY protocol label applies as for the mesh.
Containers of the docker executor get the engine's port bindings instead; a task without networks binds on
the node itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from shoal.errors import TemporaryError
from shoal.host import nsutil
from shoal.model.objects import Service
from shoal.net.engine import EngineBridges
from shoal.net.kingress import KernelIngress, KernelPort
from shoal.net.lb import Backend, TCPBalancer, UDPBalancer
from shoal.net.links import ip_of, loopback
from shoal.net.overlay import LocalNet, Overlays
from shoal.net.shared import Box, Shared

log = logging.getLogger(__name__)

LABEL_PROXY_PROTOCOL = "com.shoal.mesh.proxy-protocol"
LABEL_LOCAL_ONLY = "com.shoal.mesh.local-only"
LABEL_KEEPALIVE = "com.shoal.mesh.keepalive"
IP_TRANSPARENT = 19  # linux/in.h


def _truthy(v: str | None) -> bool:
    return (v or "").lower() in ("1", "true", "yes", "on", "v2")


def mesh_opts(svc: Service) -> tuple[bool, bool]:
    """The service's mesh options: (PROXY protocol, local only)."""
    labels = svc.spec.annotations.labels
    return _truthy(labels.get(LABEL_PROXY_PROTOCOL)), _truthy(labels.get(LABEL_LOCAL_ONLY))


def needs_proxy(svc: Service) -> bool:
    """Does the service ask for what only the user-space balancer does (PROXY protocol, keepalive)?"""
    labels = svc.spec.annotations.labels
    return _truthy(labels.get(LABEL_PROXY_PROTOCOL)) or _truthy(labels.get(LABEL_KEEPALIVE))


class Mesh:
    """The node's balancers for ingress-mode and host-mode ports, kept in line with the shared state (under the
    shared lock). `gc` drops the overlays nothing uses (the ingress network once no port is published)."""

    def __init__(self, shared: Shared, overlays: Overlays, engine: EngineBridges | None,
                 gc: Callable[[], Awaitable[None]]) -> None:
        self.shared = shared
        self.overlays = overlays
        self.engine = engine
        self._gc = gc
        self.kernel = KernelIngress(shared.node_id)
        self._ingress: dict[tuple[str, int], tuple[tuple[str, int, bool, bool], TCPBalancer | UDPBalancer]] = {}
        # host-mode ports of process tasks in their own namespace: (proto, port) -> ((task, target, proxy), lb)
        self._host_ports: dict[tuple[str, int], tuple[tuple[str, int, bool], TCPBalancer | UDPBalancer]] = {}

    @property
    def publishing(self) -> bool:
        """Does a balancer of the routing mesh listen (the ingress network is in use)?"""
        return bool(self._ingress)

    async def close(self) -> None:
        """Every balancer stops (the kernel's rules stay: connections they carry outlive the agent)."""
        for _key, lb in [*self._ingress.values(), *self._host_ports.values()]:
            await lb.close()
        self._ingress.clear()
        self._host_ports.clear()

    # --- routing mesh -------------------------------------------------------------------------------------

    def _published(self) -> dict[tuple[str, int], tuple[Service, int]]:
        out: dict[tuple[str, int], tuple[Service, int]] = {}
        for svc in self.shared.state.services.values():
            for p in svc.endpoint.ports:
                if p.publish_mode == "ingress" and p.published_port and p.protocol in ("tcp", "udp"):
                    out[(p.protocol, p.published_port)] = (svc, p.target_port)
        return out

    async def program_ingress(self) -> None:
        """A balancer for every port published in ingress mode, and none other."""
        ingress = self.shared.state.ingress
        want = self._published() if ingress is not None else {}
        for key, (opts, lb) in list(self._ingress.items()):
            w = want.get(key)
            if w is None or (w[0].id, w[1], *mesh_opts(w[0])) != opts:
                del self._ingress[key]
                await lb.close()
        if not want or ingress is None:
            await self.kernel.close()
            await self._gc()
            return
        ln = await self.overlays.ensure(ingress)
        src = await self.overlays.ensure_ingress_addr(ln)
        if not src:
            return  # this node has no ingress address yet: the allocator is about to give it one
        try:
            await self._balancers(want, ingress.id, ln, src)
        finally:
            await self._program_kernel(ingress.id, ln, src)

    async def _balancers(self, want: dict[tuple[str, int], tuple[Service, int]], ingress_id: str, ln: LocalNet,
                         src: str) -> None:
        for key, (svc, target) in want.items():
            if key in self._ingress:
                continue
            proxy, local = mesh_opts(svc)
            if local and ln.ns is None and self.engine is not None:
                await self.engine.ensure_host_tproxy()
            lb = self._mesh_balancer(key[0], svc.id, ingress_id, target, ln, src, proxy, local)
            try:
                await lb.start("0.0.0.0", key[1])
            except OSError as e:
                log.warning("cannot listen on %s port %d for service %s: %s", key[0], key[1], svc.name, e)
                continue
            self._ingress[key] = ((svc.id, target, proxy, local), lb)

    async def _program_kernel(self, ingress_id: str, ln: LocalNet, src: str) -> None:
        """The kernel's share of the mesh: every port a balancer holds (so never a port another program has)
        whose service needs no proxy and has a task to send to. Its failure leaves the balancers serving."""
        if not self.kernel.usable():
            return
        state, node_id = self.shared.state, self.shared.node_id
        ports: list[KernelPort] = []
        for (proto, published), ((service_id, target, _proxy, local), _lb) in self._ingress.items():
            svc = state.services.get(service_id)
            if svc is None or needs_proxy(svc):
                continue
            ips = tuple(e.ip for e in self.shared.directory.endpoints(service_id, ingress_id)
                        if not local or e.node_id == node_id)
            if ips:
                ports.append(KernelPort(proto, published, target, ips, local))
        try:
            await self.kernel.program(ln.ns, ln.bridge, src, ports)
        except TemporaryError as e:
            log.warning("routing mesh: the kernel path is not in place, the balancers serve: %s", e)

    def _mesh_balancer(self, proto: str, service_id: str, net_id: str, target: int, ln: LocalNet, src: str,
                       proxy: bool, local: bool) -> TCPBalancer | UDPBalancer:
        node_id, directory = self.shared.node_id, self.shared.directory

        def backends() -> list[Backend]:
            return [Backend(e.ip, target, e.node_id) for e in directory.endpoints(service_id, net_id)]

        ns = str(ln.ns) if ln.ns is not None else None

        def transparent(b: Backend, client: tuple[str, int]) -> bool:
            # A loopback source cannot leave the host's lo (the kernel drops it as martian): such clients are
            # sent from the node's ingress address, like any other mesh connection.
            return local and b.node_id == node_id and not loopback(client[0])

        if proto == "udp":
            def udp_sock(b: Backend, client: tuple[str, int]) -> socket.socket:
                s = nsutil.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    if transparent(b, client):
                        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                        s.bind((client[0], 0))  # as for TCP: the task sees the client's address
                    else:
                        s.bind((src, 0))
                    s.connect((b.host, b.port))
                    s.setblocking(False)
                except BaseException:
                    s.close()
                    raise
                return s

            return UDPBalancer(backends, proxy_protocol=proxy, local_only=local, local_node=node_id,
                               sock_factory=udp_sock)

        async def connect(b: Backend, client: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            s = nsutil.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setblocking(False)
                if transparent(b, client):
                    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                    s.bind((client[0], 0))  # the task sees the client's address: no source NAT
                else:
                    s.bind((src, 0))
                await asyncio.get_running_loop().sock_connect(s, (b.host, b.port))
            except BaseException:
                s.close()
                raise
            return await asyncio.open_connection(sock=s)

        return TCPBalancer(backends, proxy_protocol=proxy, local_only=local, local_node=node_id,
                           keepalive=self.shared.keepalive, connector=connect)

    # --- host-mode ports of process tasks with networks --------------------------------------------------

    def _host_published(self) -> dict[tuple[str, int], tuple[Box, int, bool]]:
        state = self.shared.state
        out: dict[tuple[str, int], tuple[Box, int, bool]] = {}
        for box in self.shared.boxes.values():
            t = state.tasks.get(box.task_id)
            if box.container or not box.addrs or t is None or t.endpoint is None:
                continue
            svc = state.services.get(t.service_id)
            proxy = mesh_opts(svc)[0] if svc is not None else False
            for p in t.endpoint.ports:
                if p.publish_mode == "host" and p.published_port and p.protocol in ("tcp", "udp"):
                    out[(p.protocol, p.published_port)] = (box, p.target_port, proxy)
        return out

    async def program_host_ports(self) -> None:
        """A balancer for every host-mode port of a process task in its own namespace, and none other."""
        want = self._host_published()
        for key, (opts, lb) in list(self._host_ports.items()):
            w = want.get(key)
            if w is None or (w[0].task_id, w[1], w[2]) != opts:
                del self._host_ports[key]
                await lb.close()
        for key, (box, target, proxy) in want.items():
            if key in self._host_ports:
                continue
            lb = self._host_balancer(key[0], box, target, proxy)
            try:
                await lb.start("0.0.0.0", key[1])
            except OSError as e:
                log.warning("cannot listen on host-mode %s port %d for task %s: %s", key[0], key[1], box.task_id, e)
                continue
            self._host_ports[key] = ((box.task_id, target, proxy), lb)

    def _host_balancer(self, proto: str, box: Box, target: int, proxy: bool) -> TCPBalancer | UDPBalancer:
        ns, ip = str(box.ns), ip_of(box.addrs[0])
        backend = Backend(ip, target, self.shared.node_id)
        if proto == "udp":
            def udp_sock(b: Backend, client: tuple[str, int]) -> socket.socket:
                s = nsutil.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.connect((b.host, b.port))
                    s.setblocking(False)
                except BaseException:
                    s.close()
                    raise
                return s

            return UDPBalancer(lambda: [backend], proxy_protocol=proxy, sock_factory=udp_sock)

        async def connect(b: Backend, client: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            s = nsutil.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setblocking(False)
                await asyncio.get_running_loop().sock_connect(s, (b.host, b.port))
            except BaseException:
                s.close()
                raise
            return await asyncio.open_connection(sock=s)

        return TCPBalancer(lambda: [backend], proxy_protocol=proxy, keepalive=self.shared.keepalive,
                           connector=connect)
