"""The allocator: network resources for services and tasks, then NEW -> PENDING.

- IPAM: each network's subnets (chosen at network create from the cluster's default address pool, around
  the subnets nodes report their engines and hosts route: `NodeDescription.routed_subnets`), one
  address per task per network, one VIP per service per network in `vip` mode; addresses return to the
  pool when a task ends or is deleted and when a service goes away. The in-memory bitmap is rebuilt from
  the store whenever the allocator starts, so a new leader never hands out an address twice.
- Nodes: every node gets one address on the ingress network (`Node.attachments`), the source of the routing
  mesh's connections to tasks on other nodes; it returns when the node is removed.
- Ports: ingress-mode published ports without a number get one from 30000-32767.
- A task whose network has no free address stays NEW with a message saying so.
- Network attachments of plain containers (shoal.manager.attachments): their one network from their spec,
  RUNNING once allocated; deleted with their node.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import replace

from shoal.api.attachments import is_attachment, task_holds_addresses
from shoal.manager.attachments import attached_status
from shoal.model.evolve import evolve
from shoal.model.objects import (
    Endpoint,
    EndpointSpec,
    Network,
    NetworkAttachment,
    Node,
    PortConfig,
    Service,
    Task,
    TaskStatus,
    VirtualIP,
)
from shoal.model.state import TaskState
from shoal.store.memory import Commit, Event, MemoryStore, Tx, WatchOverflow

log = logging.getLogger(__name__)

INGRESS_PORT_RANGE = (30000, 32767)


class PoolExhausted(Exception):
    pass


class _Subnet:
    """Addresses of one subnet; new ones are handed out only inside `ip_range` when one is given."""

    def __init__(self, cidr: str, gateway: str, ip_range: str = "") -> None:
        self.net = ipaddress.ip_network(cidr, strict=False)
        self.used: set[int] = set()
        base = int(self.net.network_address)
        self.base = base
        self.size = self.net.num_addresses
        self.used.add(0)
        if self.size > 2:
            self.used.add(self.size - 1)  # broadcast
        if gateway:
            self.used.add(int(ipaddress.ip_address(gateway)) - base)
        else:
            self.used.add(1)
        self.lo, self.hi = 0, self.size  # offsets [lo, hi) new addresses come from
        if ip_range:
            rng = ipaddress.ip_network(ip_range, strict=False)
            self.lo = max(0, int(rng.network_address) - base)
            self.hi = min(self.size, int(rng.network_address) + rng.num_addresses - base)
        self.next = max(1, self.lo)

    def take(self) -> str:
        span = self.hi - self.lo
        for i in range(span):
            off = self.lo + (self.next - self.lo + i) % span
            if off not in self.used:
                self.used.add(off)
                self.next = off + 1
                return f"{ipaddress.ip_address(self.base + off)}/{self.net.prefixlen}"
        raise PoolExhausted(str(self.net))

    def free(self) -> int:
        return sum(1 for off in range(self.lo, self.hi) if off not in self.used)

    def mark(self, addr: str) -> bool:
        ip = ipaddress.ip_interface(addr).ip
        if ip not in self.net:
            return False
        self.used.add(int(ip) - self.base)
        return True

    def release(self, addr: str) -> bool:
        ip = ipaddress.ip_interface(addr).ip
        if ip not in self.net:
            return False
        self.used.discard(int(ip) - self.base)
        return True


class IPAM:
    def __init__(self) -> None:
        self.nets: dict[str, list[_Subnet]] = {}

    def add_network(self, net: Network) -> None:
        if net.id in self.nets:
            return
        self.nets[net.id] = [_Subnet(c.subnet, c.gateway, c.ip_range) for c in net.ipam.configs if c.subnet]

    def take(self, net_id: str) -> str:
        for sub in self.nets.get(net_id, []):
            try:
                return sub.take()
            except PoolExhausted:
                continue
        raise PoolExhausted(net_id)

    def mark(self, net_id: str, addr: str) -> None:
        for sub in self.nets.get(net_id, []):
            if sub.mark(addr):
                return

    def release(self, net_id: str, addr: str) -> None:
        for sub in self.nets.get(net_id, []):
            if sub.release(addr):
                return

    def free_count(self, net_id: str) -> int:
        return sum(s.free() for s in self.nets.get(net_id, []))


def allocate_subnet(used: list[str], pools: tuple[str, ...], size: int, avoid: Iterable[str] = ()) -> str:
    """The first /size subnet of the pools that overlaps no subnet in use, and none of `avoid` (what the
    nodes' engines and hosts already route) when the pools leave such a one; otherwise the first that
    overlaps no subnet in use."""
    taken = [ipaddress.ip_network(u, strict=False) for u in used]
    routed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for a in avoid:
        try:
            routed.append(ipaddress.ip_network(a, strict=False))
        except ValueError:
            continue  # a node's report is not trusted to be well formed
    fallback = ""
    for pool in pools:
        p = ipaddress.ip_network(pool, strict=False)
        if size < p.prefixlen:
            continue
        for cand in p.subnets(new_prefix=size):
            if any(cand.overlaps(t) for t in taken):
                continue
            if not any(cand.overlaps(r) for r in routed):
                return str(cand)
            fallback = fallback or str(cand)
    if fallback:
        return fallback
    raise PoolExhausted("could not find an available, non-overlapping IPv4 address pool among the "
                        "defaults to assign to the network")


class Allocator:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.ipam = IPAM()
        self.ports: set[tuple[str, int]] = set()
        self._held: dict[str, list[tuple[str, str]]] = {}  # task id -> [(net id, addr)]
        self._vips: dict[str, list[tuple[str, str]]] = {}  # service id -> [(net id, addr)]
        self._node_addrs: dict[str, list[tuple[str, str]]] = {}  # node id -> [(net id, addr)]
        self._dirty_tasks: set[str] = set()
        self._dirty_services: set[str] = set()
        self._starved = False  # some task is waiting for an address
        self._gone_nodes: set[str] = set()  # removed nodes whose attachments are still to delete
        self._retry_starved = False
        # Nodes left without an ingress address (the network is full): a change to one of them needs no pass
        # until an address frees; the count is logged when it changes.
        self._nodes_left_out = 0

    def _rebuild(self) -> None:
        v = self.store.view()
        self.ipam = IPAM()
        self.ports.clear()
        self._held.clear()
        self._vips.clear()
        self._node_addrs.clear()
        for n in v.all("network"):
            self.ipam.add_network(n)
        for s in v.services():
            self._vips[s.id] = [(vip.network_id, vip.addr) for vip in s.endpoint.virtual_ips]
            for net_id, addr in self._vips[s.id]:
                self.ipam.mark(net_id, addr)
            for p in s.endpoint.ports:
                if p.publish_mode == "ingress" and p.published_port:
                    self.ports.add((p.protocol, p.published_port))
        for node in v.nodes():
            held = [(a.network_id, addr) for a in node.attachments for addr in a.addresses]
            self._node_addrs[node.id] = held
            for net_id, addr in held:
                self.ipam.mark(net_id, addr)
        for t in v.tasks():
            if task_holds_addresses(t):
                held = [(a.network_id, addr) for a in t.networks for addr in a.addresses]
                self._held[t.id] = held
                for net_id, addr in held:
                    self.ipam.mark(net_id, addr)

    async def run(self) -> None:
        while True:
            self._rebuild()
            sub = self.store.watch(kinds=("network", "service", "task", "node"))
            try:
                await self._pass(full=True)
                pending = False
                async for item in sub:
                    if isinstance(item, Event):
                        pending |= self._observe(item)
                    elif isinstance(item, Commit):
                        for more in sub.drain():
                            if isinstance(more, Event):
                                pending |= self._observe(more)
                        if pending:
                            pending = False
                            await self._pass(full=False)
            except WatchOverflow:
                log.warning("allocator fell behind; rebuilding")
            finally:
                sub.close()

    def _observe(self, ev: Event) -> bool:
        """Release what went away; say whether something may need allocating."""
        if ev.kind == "network":
            self._nodes_left_out = 0
            if ev.action == "remove":
                self.ipam.nets.pop(ev.obj.id, None)
            else:
                self.ipam.add_network(ev.obj)
            return bool(ev.obj.spec.ingress)  # nodes need an address on a new ingress network
        if ev.kind == "node":
            if ev.action == "remove":
                for net_id, addr in self._node_addrs.pop(ev.obj.id, []):
                    self.ipam.release(net_id, addr)
                    self._nodes_left_out = 0
                self._gone_nodes.add(ev.obj.id)
                return True
            # A node without an address needs one, unless the network is full: a pass would find it just as full
            # (an address that frees starts one).
            return not ev.obj.attachments and not self._nodes_left_out
        if ev.kind == "service":
            if ev.action == "remove":
                vips = self._vips.pop(ev.obj.id, [])
                for net_id, addr in vips:
                    self.ipam.release(net_id, addr)
                for p in ev.obj.endpoint.ports:
                    self.ports.discard((p.protocol, p.published_port))
                nodes_retry = bool(vips) and self._nodes_left_out > 0
                if nodes_retry:
                    self._nodes_left_out = 0
                return nodes_retry
            self._dirty_services.add(ev.obj.id)
            return True
        t: Task = ev.obj
        if ev.action == "remove" or not task_holds_addresses(t):
            released = self._held.pop(t.id, [])
            for net_id, addr in released:
                self.ipam.release(net_id, addr)
            # Tasks waiting for an address on a full network get another try, and so do nodes.
            self._retry_starved |= bool(released) and self._starved
            nodes_retry = bool(released) and self._nodes_left_out > 0
            if nodes_retry:
                self._nodes_left_out = 0
            return self._retry_starved or nodes_retry
        if t.status.state == TaskState.NEW:
            self._dirty_tasks.add(t.id)
            return True
        return False

    async def _pass(self, *, full: bool) -> None:
        if self._retry_starved:
            full, self._retry_starved, self._starved = True, False, False
        services, self._dirty_services = self._dirty_services, set()
        tasks, self._dirty_tasks = self._dirty_tasks, set()

        gone, self._gone_nodes = self._gone_nodes, set()

        def fn(tx: Tx) -> None:
            self._allocate_nodes(tx)
            self._drop_attachments(tx, None if full else gone)
            for svc in tx.services() if full else filter(None, map(tx.service, services)):
                self._allocate_service(tx, svc)
            # Per pass: each service's networks (services are final by now) and the PENDING status,
            # one frozen object shared by every task allocated in this transaction.
            nets: dict[str, list[str]] = {}
            pending = TaskStatus(timestamp=tx.now, state=TaskState.PENDING, message="pending task scheduling")
            for t in tx.tasks() if full else filter(None, map(tx.task, tasks)):
                if t.status.state == TaskState.NEW and t.desired_state <= TaskState.COMPLETE:
                    self._allocate_task(tx, t, nets, pending)

        await self.store.update(fn)

    # --- nodes ------------------------------------------------------------------------------------

    def _allocate_nodes(self, tx: Tx) -> None:
        ingress = next((n for n in tx.all("network") if n.spec.ingress), None)
        if ingress is not None:
            # The transaction may see an ingress network whose event this allocator has not had yet (swarm
            # init creates it with the first node, in one commit).
            self.ipam.add_network(ingress)
        exhausted = False  # the ingress network is full: the other nodes of this pass need not try
        left_out = 0
        for node in tx.nodes():
            node_obj: Node = node
            keep = tuple(a for a in node_obj.attachments if ingress is not None and a.network_id == ingress.id)
            if keep == node_obj.attachments and (keep or ingress is None):
                continue
            for a in node_obj.attachments:
                if a not in keep:
                    for addr in a.addresses:
                        self.ipam.release(a.network_id, addr)
            if not keep and ingress is not None:
                if not exhausted:
                    try:
                        keep = (NetworkAttachment(network_id=ingress.id, addresses=(self.ipam.take(ingress.id),)),)
                    except PoolExhausted:
                        exhausted = True
                left_out += not keep
            self._node_addrs[node_obj.id] = [(a.network_id, addr) for a in keep for addr in a.addresses]
            if keep != node_obj.attachments:
                # A node left without an address is not rewritten: its update would wake this allocator for
                # another pass that finds the network just as full (a busy loop of Raft writes).
                tx.update(replace(node_obj, attachments=keep), check_version=False)
        if left_out != self._nodes_left_out and left_out:
            log.warning("no address left on the ingress network for %d node(s); they get one once one frees",
                        left_out)
        self._nodes_left_out = left_out

    def _drop_attachments(self, tx: Tx, nodes: set[str] | None) -> None:
        """Attachments of removed nodes go (their containers went with the node); all of them on a full pass."""
        if nodes is not None and not nodes:
            return
        live = {n.id for n in tx.nodes()}
        for t in tx.tasks() if nodes is None else [t for nid in nodes for t in tx.tasks(node_id=nid)]:
            if is_attachment(t) and t.node_id not in live:
                tx.delete("task", t.id)

    # --- services ---------------------------------------------------------------------------------

    def _service_networks(self, tx: Tx, svc: Service) -> list[str]:
        nets = [n.target for n in svc.spec.task_template.networks]
        spec = svc.spec.endpoint_spec or EndpointSpec()
        if any(p.publish_mode == "ingress" for p in spec.ports):
            ingress = next((n for n in tx.all("network") if n.spec.ingress), None)
            if ingress is not None and ingress.id not in nets:
                nets.insert(0, ingress.id)
        return nets

    def _allocate_service(self, tx: Tx, svc: Service) -> None:
        spec = svc.spec.endpoint_spec or EndpointSpec()
        want_nets = self._service_networks(tx, svc) if spec.mode == "vip" else []
        current = {v.network_id: v for v in svc.endpoint.virtual_ips}
        ports = self._allocate_ports(svc, spec)
        if set(current) == set(want_nets) and ports == svc.endpoint.ports and svc.endpoint.spec == spec:
            return
        vips: list[VirtualIP] = []
        for net_id in want_nets:
            if net_id in current:
                vips.append(current[net_id])
                continue
            try:
                addr = self.ipam.take(net_id)
            except PoolExhausted:
                log.warning("no address left on network %s for service %s", net_id, svc.id)
                continue
            vips.append(VirtualIP(network_id=net_id, addr=addr))
        for net_id, v in current.items():
            if net_id not in want_nets:
                self.ipam.release(net_id, v.addr)
        self._vips[svc.id] = [(v.network_id, v.addr) for v in vips]
        tx.update(replace(svc, endpoint=Endpoint(spec=spec, ports=ports, virtual_ips=tuple(vips))),
                  check_version=False)

    def _allocate_ports(self, svc: Service, spec: EndpointSpec) -> tuple[PortConfig, ...]:
        old = {(p.protocol, p.target_port, p.publish_mode): p.published_port for p in svc.endpoint.ports}
        out: list[PortConfig] = []
        for p in spec.ports:
            if p.publish_mode == "ingress" and not p.published_port:
                prev = old.get((p.protocol, p.target_port, p.publish_mode), 0)
                port = prev or self._free_port(p.protocol)
                self.ports.add((p.protocol, port))
                out.append(replace(p, published_port=port))
            else:
                if p.publish_mode == "ingress":
                    self.ports.add((p.protocol, p.published_port))
                out.append(p)
        for p in svc.endpoint.ports:
            if p not in out and p.publish_mode == "ingress":
                self.ports.discard((p.protocol, p.published_port))
        return tuple(out)

    def _free_port(self, proto: str) -> int:
        for port in range(INGRESS_PORT_RANGE[0], INGRESS_PORT_RANGE[1] + 1):
            if (proto, port) not in self.ports:
                return port
        raise PoolExhausted("no ingress ports left")

    # --- tasks ------------------------------------------------------------------------------------

    def _allocate_task(self, tx: Tx, t: Task, nets: dict[str, list[str]], pending: TaskStatus) -> None:
        svc = None if is_attachment(t) else tx.service(t.service_id)
        if svc is not None:
            svc_nets = nets.get(svc.id)
            if svc_nets is None:
                svc_nets = nets[svc.id] = self._service_networks(tx, svc)
        elif is_attachment(t):
            svc_nets = [c.target for c in t.spec.networks]
        else:
            return
        attachments: list[NetworkAttachment] = []
        taken: list[tuple[str, str]] = []
        aliases = {n.target: n.aliases for n in t.spec.networks} if svc_nets else {}
        try:
            for net_id in svc_nets:
                addr = self.ipam.take(net_id)
                taken.append((net_id, addr))
                attachments.append(NetworkAttachment(network_id=net_id, addresses=(addr,),
                                                     aliases=aliases.get(net_id, ())))
        except PoolExhausted as e:
            for net_id, addr in taken:
                self.ipam.release(net_id, addr)
            net = tx.get("network", str(e))
            name = net.name if net is not None else str(e)
            self._starved = True
            msg = f"no IP addresses available on network {name}"
            if t.status.err != msg:
                tx.update(replace(t, status=replace(t.status, timestamp=tx.now, err=msg,
                                                    message="pending task allocation")), check_version=False)
            return
        self._held[t.id] = taken
        if svc is None:  # an attachment: nothing runs it, it is live once it holds its address
            tx.update(attached_status(evolve(t, networks=tuple(attachments)), tx.now), check_version=False)
            return
        tx.update(evolve(t, networks=tuple(attachments), endpoint=svc.endpoint, status=pending),
                  check_version=False)
