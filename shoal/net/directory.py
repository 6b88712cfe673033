"""Who answers for a name on a network: the data behind the embedded DNS server and the load balancers.

`ServiceDirectory` is the small interface both consume. `StoreDirectory` implements it from a store: it
watches services and tasks and, after every commit that touches them, rebuilds the entries of the services
involved, so an answer never outlives the task behind it by more than one commit. On a worker the same
interface will be fed from the dispatcher's assignments instead of a local store.

What resolves, per network (names are case-insensitive):

- the service name and each of its network aliases: the service's VIP on that network (`vip` mode), or the
  IPs of its serving tasks (`dnsrr` mode);
- `tasks.<service>` and `tasks.<alias>`: the IPs of its serving tasks;
- each serving task's name (`<service>.<slot>.<task id>`, or `<service>.<node id>.<task id>` when global).

A task serves while it is RUNNING, not unhealthy, and still meant to run (desired state RUNNING or less):
a task told to shut down leaves the answers at once, before its process stops.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shoal.model.objects import Service, Task
from shoal.model.state import TaskState
from shoal.store.memory import Commit, Event, MemoryStore, ReadTx, WatchOverflow
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One serving task on one network."""

    task_id: str
    node_id: str
    ip: str


class ServiceDirectory(Protocol):
    def lookup(self, name: str, network_id: str) -> list[str]:
        """The IPs `name` resolves to on the network (empty: not ours)."""

    def reverse(self, ip: str, network_id: str) -> list[str]:
        """The names (task names, service names for VIPs) of an address on the network."""


def task_serves(t: Task) -> bool:
    return (t.status.state == TaskState.RUNNING and t.status.healthy is not False
            and t.desired_state <= TaskState.RUNNING)


def task_dns_name(t: Task, service_name: str) -> str:
    if t.annotations.name:
        return t.annotations.name
    return f"{service_name}.{t.slot if t.slot else t.node_id}.{t.id}"


def _ip(addr: str) -> str:
    return str(ipaddress.ip_interface(addr).ip)


@dataclass(frozen=True, slots=True)
class _Entries:
    """What one service contributes: names -> IPs and IPs -> names, per network; its endpoints."""

    names: dict[tuple[str, str], list[str]]
    reverse: dict[tuple[str, str], list[str]]
    endpoints: dict[str, list[Endpoint]]  # network id -> serving tasks


def service_entries(svc: Service, tasks: list[Task]) -> _Entries:
    names: dict[tuple[str, str], list[str]] = {}
    reverse: dict[tuple[str, str], list[str]] = {}
    endpoints: dict[str, list[Endpoint]] = {}
    for t in tasks:
        if not task_serves(t):
            continue
        tname = task_dns_name(t, svc.name).lower()
        for att in t.networks:
            for addr in att.addresses:
                ip = _ip(addr)
                endpoints.setdefault(att.network_id, []).append(Endpoint(t.id, t.node_id, ip))
                names.setdefault((att.network_id, tname), []).append(ip)
                reverse.setdefault((att.network_id, ip), []).append(tname)
    aliases = {n.target: n.aliases for n in svc.spec.task_template.networks}
    vips = {v.network_id: _ip(v.addr) for v in svc.endpoint.virtual_ips}
    dnsrr = (svc.spec.endpoint_spec.mode if svc.spec.endpoint_spec else "vip") == "dnsrr"
    for net_id in set(vips) | set(aliases) | set(endpoints):
        ips = [e.ip for e in endpoints.get(net_id, [])]
        for n in (svc.name, *aliases.get(net_id, ())):
            n = n.lower()
            if not n:
                continue
            names[(net_id, f"tasks.{n}")] = list(ips)
            if not dnsrr and net_id in vips:
                names[(net_id, n)] = [vips[net_id]]
                reverse.setdefault((net_id, vips[net_id]), []).append(n)
            elif dnsrr:
                names[(net_id, n)] = list(ips)
    return _Entries(names, reverse, endpoints)


class StoreDirectory:
    """A `ServiceDirectory` kept current from a store's watch (start it, or run `run()` in a task group).

    `node_id` is the node this directory serves; `endpoints(..., local_only=True)` keeps that node's tasks.
    """

    def __init__(self, store: MemoryStore, node_id: str | None = None) -> None:
        self.store = store
        self.node_id = node_id
        self.version = -1  # the store version the entries reflect
        self._by_service: dict[str, _Entries] = {}
        self._service_of_name: dict[str, str] = {}  # service name (lower) -> id
        self._names: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._reverse: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._load(self.store.view())  # answers are right from the first query on
        self._task = asyncio.create_task(self.run(), name="net-directory")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def run(self) -> None:
        while True:
            view, sub = self.store.view_and_watch(lambda v: v, kinds=("service", "task"), all_commits=True)
            try:
                self._load(view)
                dirty: set[str] = set()
                async for item in sub:
                    if isinstance(item, Event):
                        dirty.add(item.obj.id if item.kind == "service" else item.obj.service_id)
                    elif isinstance(item, Commit):
                        self._refresh(dirty, item.version)
                        dirty = set()
            except WatchOverflow:
                log.warning("service directory fell behind; reloading")
            finally:
                sub.close()

    async def synced(self, version: int) -> None:
        """Return once the entries reflect store version `version` (or later)."""
        while self.version < version:
            self._changed.clear()
            await self._changed.wait()

    def on_change(self, fn: Callable[[], None]) -> None:
        """Call `fn` after every change of the entries (load balancers refresh their backends)."""
        self._listeners.append(fn)

    # --- building -------------------------------------------------------------------------------------

    def _load(self, v: ReadTx) -> None:
        self._by_service.clear()
        self._service_of_name.clear()
        self._names.clear()
        self._reverse.clear()
        self._refresh({s.id for s in v.services()}, self.store.version, v)

    def _refresh(self, sids: set[str], version: int, v: ReadTx | None = None) -> None:
        view = v if v is not None else self.store.view()
        for sid in sids:
            old = self._by_service.pop(sid, None)
            if old is not None:
                for key in old.names:
                    self._drop(self._names, key, sid)
                for key in old.reverse:
                    self._drop(self._reverse, key, sid)
            svc = view.service(sid)
            for name, owner in list(self._service_of_name.items()):
                if owner == sid:
                    del self._service_of_name[name]
            if svc is None:
                continue
            entries = service_entries(svc, view.tasks(service_id=sid))
            self._by_service[sid] = entries
            self._service_of_name[svc.name.lower()] = sid
            for key, ips in entries.names.items():
                self._names.setdefault(key, {})[sid] = ips
            for key, names in entries.reverse.items():
                self._reverse.setdefault(key, {})[sid] = names
        self.version = max(self.version, version)
        self._changed.set()
        if sids:
            for fn in list(self._listeners):
                try:
                    fn()
                except Exception:
                    log.exception("service directory listener failed")

    @staticmethod
    def _drop(index: dict[tuple[str, str], dict[str, list[str]]], key: tuple[str, str], sid: str) -> None:
        per = index.get(key)
        if per is not None:
            per.pop(sid, None)
            if not per:
                del index[key]

    # --- reading --------------------------------------------------------------------------------------

    def lookup(self, name: str, network_id: str) -> list[str]:
        per = self._names.get((network_id, name.rstrip(".").lower()))
        if not per:
            return []
        return [ip for ips in per.values() for ip in ips]

    def reverse(self, ip: str, network_id: str) -> list[str]:
        per = self._reverse.get((network_id, ip))
        if not per:
            return []
        return [n for names in per.values() for n in names]

    def service_id(self, name: str) -> str | None:
        return self._service_of_name.get(name.lower())

    def endpoints(self, service_id: str, network_id: str, *, local_only: bool = False) -> list[Endpoint]:
        """The serving tasks of a service on a network (only this node's with `local_only`)."""
        entries = self._by_service.get(service_id)
        if entries is None:
            return []
        eps = entries.endpoints.get(network_id, [])
        if local_only:
            return [e for e in eps if e.node_id == self.node_id]
        return list(eps)
