"""What a node's network agent needs to know about the cluster, as one snapshot, and where it comes from.

`NetState` holds the networks, the services that have an endpoint on one (VIPs, ports, network attachments),
the tasks that hold addresses and are placed on a node, and every node's underlay address and ingress
address. It is read-only cluster state, so any manager serves it from its own store replica (not only the
leader): a manager's agent reads its local store (`LocalFeed`), a worker's agent gets the same snapshot
streamed by the manager its session is with (`shoal.rpc.netfeed`).

Snapshots are built on demand when the consumer is ready for the next one, after at least one change: a
burst of commits while the agent programs the kernel costs one snapshot, not one per commit.

`SnapshotDirectory` answers the DNS server and the balancers from a snapshot (the same names as
`shoal.net.directory.service_entries`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoal.api.attachments import LABEL_NAME, is_attachment, task_holds_addresses
from shoal.model import codec
from shoal.model.objects import Cluster, Network, Service, Task
from shoal.net.directory import Endpoint, service_entries
from shoal.store.memory import Commit, MemoryStore, ReadTx, WatchOverflow
from shoal.tasks import cancel_and_wait


@dataclass(frozen=True, slots=True)
class NodeAddrs:
    addr: str  # underlay address (VXLAN tunnel endpoint)
    ingress: str = ""  # CIDR on the ingress network, "" until allocated


@dataclass(frozen=True)
class NetState:
    version: int = -1
    networks: dict[str, Network] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    nodes: dict[str, NodeAddrs] = field(default_factory=dict)
    data_path_port: int = 4789

    @property
    def ingress(self) -> Network | None:
        return next((n for n in self.networks.values() if n.spec.ingress), None)


def _relevant_service(s: Service) -> bool:
    return bool(s.endpoint.virtual_ips or s.endpoint.ports or s.spec.task_template.networks)


def _relevant_task(t: Task) -> bool:
    return bool(t.networks) and bool(t.node_id) and task_holds_addresses(t)


def snapshot(v: ReadTx, version: int) -> NetState:
    cluster: Cluster | None = v.cluster()
    nodes: dict[str, NodeAddrs] = {}
    for n in v.nodes():
        ingress = next((a for att in n.attachments for a in att.addresses), "")
        nodes[n.id] = NodeAddrs(n.status.addr, ingress)
    return NetState(
        version=version,
        networks={n.id: n for n in v.all("network")},
        services={s.id: s for s in v.services() if _relevant_service(s)},
        tasks={t.id: t for t in v.tasks() if _relevant_task(t)},
        nodes=nodes,
        data_path_port=cluster.data_path_port if cluster is not None else 4789)


def encode_state(s: NetState) -> dict[str, Any]:
    return {"version": s.version, "data_path_port": s.data_path_port,
            "networks": [codec.encode(n) for n in s.networks.values()],
            "services": [codec.encode(x) for x in s.services.values()],
            "tasks": [codec.encode(t) for t in s.tasks.values()],
            "nodes": {k: [a.addr, a.ingress] for k, a in s.nodes.items()}}


def decode_state(raw: dict[str, Any]) -> NetState:
    nets = [codec.decode_as(Network, n) for n in raw.get("networks", ())]
    svcs = [codec.decode_as(Service, x) for x in raw.get("services", ())]
    tasks = [codec.decode_as(Task, t) for t in raw.get("tasks", ())]
    return NetState(version=int(raw.get("version", -1)), data_path_port=int(raw.get("data_path_port", 4789)),
                    networks={n.id: n for n in nets}, services={s.id: s for s in svcs},
                    tasks={t.id: t for t in tasks},
                    nodes={k: NodeAddrs(v[0], v[1]) for k, v in dict(raw.get("nodes", {})).items()})


class NetFeed(Protocol):
    def states(self) -> AsyncIterator[NetState]:
        """The current snapshot, then a newer one after changes (never two equal versions in a row)."""


class StoreChanges:
    """Wakes when a commit touched what a snapshot holds; the watch is restarted after an overflow."""

    KINDS = ("network", "service", "task", "node", "cluster")

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def states(self) -> AsyncIterator[NetState]:
        while True:
            sub = self.store.watch(kinds=self.KINDS, limit=1_000_000)
            try:
                yield snapshot(self.store.view(), self.store.version)
                while True:
                    item = await sub.get()
                    if not isinstance(item, Commit):
                        # something changed: wait for its commit marker, skip everything queued since
                        while not isinstance(item, Commit):
                            item = await sub.get()
                    sub.drain()
                    yield snapshot(self.store.view(), self.store.version)
            except WatchOverflow:
                continue
            finally:
                sub.close()


LocalFeed = StoreChanges


class LatestFeed:
    """Keeps only the newest snapshot of a feed read in the background: the consumer never works through a
    backlog of stale states."""

    def __init__(self, feed: NetFeed) -> None:
        self.feed = feed
        self.latest: NetState | None = None
        self._new = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name="net-feed")

    async def _pump(self) -> None:
        async for s in self.feed.states():
            self.latest = s
            self._new.set()

    async def next(self) -> NetState:
        await self._new.wait()
        self._new.clear()
        assert self.latest is not None
        return self.latest

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None


def _ip(addr: str) -> str:
    return str(ipaddress.ip_interface(addr).ip)


class SnapshotDirectory:
    """`ServiceDirectory` (and `endpoints` for the balancers) over one `NetState`; `update` swaps it."""

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id
        self.state = NetState()
        self._names: dict[tuple[str, str], list[str]] = {}
        self._reverse: dict[tuple[str, str], list[str]] = {}
        self._endpoints: dict[tuple[str, str], list[Endpoint]] = {}
        self._service_of_name: dict[str, str] = {}

    def update(self, state: NetState) -> None:
        names: dict[tuple[str, str], list[str]] = {}
        reverse: dict[tuple[str, str], list[str]] = {}
        endpoints: dict[tuple[str, str], list[Endpoint]] = {}
        by_service: dict[str, list[Task]] = {}
        for t in state.tasks.values():
            by_service.setdefault(t.service_id, []).append(t)
        for t in by_service.pop("", []):
            if is_attachment(t):  # a plain container: its name and aliases, as libnetwork registers them
                self._add_container(t, names, reverse)
        for svc in state.services.values():
            e = service_entries(svc, by_service.get(svc.id, []))
            for k, ips in e.names.items():
                names.setdefault(k, []).extend(ips)
            for k, ns in e.reverse.items():
                reverse.setdefault(k, []).extend(ns)
            for net_id, eps in e.endpoints.items():
                endpoints[(svc.id, net_id)] = eps
        self._names, self._reverse, self._endpoints = names, reverse, endpoints
        self._service_of_name = {s.name.lower(): s.id for s in state.services.values()}
        self.state = state

    @staticmethod
    def _add_container(t: Task, names: dict[tuple[str, str], list[str]],
                       reverse: dict[tuple[str, str], list[str]]) -> None:
        cname = t.annotations.labels.get(LABEL_NAME, "")
        for att in t.networks:
            for addr in att.addresses:
                ip = _ip(addr)
                for n in dict.fromkeys(x.lower() for x in (cname, *att.aliases) if x):
                    names.setdefault((att.network_id, n), []).append(ip)
                if cname:
                    reverse.setdefault((att.network_id, ip), []).append(cname.lower())

    def lookup(self, name: str, network_id: str) -> list[str]:
        return list(self._names.get((network_id, name.rstrip(".").lower()), ()))

    def reverse(self, ip: str, network_id: str) -> list[str]:
        return list(self._reverse.get((network_id, ip), ()))

    def service_id(self, name: str) -> str | None:
        return self._service_of_name.get(name.lower())

    def endpoints(self, service_id: str, network_id: str, *, local_only: bool = False) -> list[Endpoint]:
        eps = self._endpoints.get((service_id, network_id), [])
        if local_only:
            return [e for e in eps if e.node_id == self.node_id]
        return list(eps)
