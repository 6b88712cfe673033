"""The leader's memory of what each node's tasks use, and the views of it (`GET /_shoal/usage`, the metrics).

Reports come with heartbeats (shoal.api.usage): the dispatcher keeps each node's latest one here, with the time
it arrived on the manager's monotonic clock. Nothing of it enters the store or the Raft log: a new leader starts
empty and fills within one report period. A report is shown while it is younger than `STALE_AFTER` seconds and
its node still has a session (a node that went down or was removed drops out at once); a task is shown while the
store still has it on that node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shoal.api.usage import STALE_AFTER, NodeUsage, TaskUsage
from shoal.clock import Clock
from shoal.manager.scheduler.nodeinfo import is_held, reservations
from shoal.store.memory import ReadTx


@dataclass(frozen=True, slots=True)
class Received:
    report: NodeUsage
    at: float  # the manager's monotonic clock when it arrived


class UsageStore:
    def __init__(self, clock: Clock, stale_after: float = STALE_AFTER) -> None:
        self.clock = clock
        self.stale_after = stale_after
        self._nodes: dict[str, Received] = {}

    def put(self, node_id: str, report: NodeUsage) -> None:
        self._nodes[node_id] = Received(report, self.clock.monotonic())

    def drop(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def clear(self) -> None:
        self._nodes.clear()

    def current(self, alive: Callable[[str], bool] = lambda _: True) -> dict[str, tuple[NodeUsage, float]]:
        """Each node's report with its age in seconds, for nodes `alive` says still have a session; stale
        reports are forgotten."""
        now = self.clock.monotonic()
        out: dict[str, tuple[NodeUsage, float]] = {}
        for nid, got in list(self._nodes.items()):
            age = now - got.at
            if age > self.stale_after:
                del self._nodes[nid]
            elif alive(nid):
                out[nid] = (got.report, age)
        return out


@dataclass(frozen=True, slots=True)
class ServiceUsage:
    service_id: str
    name: str
    cpus: float
    memory_bytes: int
    tasks: int  # tasks measured


def live_tasks(v: ReadTx, reports: dict[str, tuple[NodeUsage, float]]) -> Iterable[tuple[str, TaskUsage]]:
    """(node ID, task usage) of every reported task the store still has on that node."""
    for nid, (report, _) in reports.items():
        for tu in report.tasks:
            t = v.task(tu.task_id)
            if t is not None and t.node_id == nid:
                yield nid, tu


def per_service(v: ReadTx, reports: dict[str, tuple[NodeUsage, float]]) -> list[ServiceUsage]:
    """Every service's use, summed over its measured tasks (services with none measured show zeros)."""
    cpus: dict[str, float] = {}
    mem: dict[str, int] = {}
    count: dict[str, int] = {}
    for _, tu in live_tasks(v, reports):
        t = v.task(tu.task_id)
        sid = t.service_id if t is not None else tu.service_id
        cpus[sid] = cpus.get(sid, 0.0) + (tu.cpus or 0.0)
        mem[sid] = mem.get(sid, 0) + (tu.memory_bytes or 0)
        count[sid] = count.get(sid, 0) + 1
    return [ServiceUsage(s.id, s.name, cpus.get(s.id, 0.0), mem.get(s.id, 0), count.get(s.id, 0))
            for s in v.services()]


def usage_document(v: ReadTx, reports: dict[str, tuple[NodeUsage, float]], stale_after: float) -> dict[str, Any]:
    """What `GET /_shoal/usage` answers (docs/metrics.md, "Usage"): per node, per service, per task."""
    live = {nid: [tu for _, tu in live_tasks(v, {nid: r})] for nid, r in reports.items()}
    reserved_cpus: dict[str, int] = {}
    reserved_mem: dict[str, int] = {}
    for t in v.tasks():
        r = reservations(t)
        if t.node_id and r is not None and is_held(t):
            reserved_cpus[t.node_id] = reserved_cpus.get(t.node_id, 0) + r.nano_cpus
            reserved_mem[t.node_id] = reserved_mem.get(t.node_id, 0) + r.memory_bytes
    nodes: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    names = {s.id: s.name for s in v.services()}
    for node in v.nodes():
        got = reports.get(node.id)
        entry: dict[str, Any] = {
            "NodeID": node.id, "Hostname": node.description.hostname, "Reported": got is not None,
            "Age": round(got[1], 3) if got is not None else None,
            "TakenAt": got[0].taken_at if got is not None else None,
            "CPUs": node.description.resources.nano_cpus / 1e9,
            "MemoryBytes": node.description.resources.memory_bytes,
            "ReservedCPUs": reserved_cpus.get(node.id, 0) / 1e9,
            "ReservedMemoryBytes": reserved_mem.get(node.id, 0),
            "UsedCPUs": None, "UsedMemoryBytes": None, "Tasks": 0, "Host": None}
        if got is not None:
            mine = live.get(node.id, [])
            entry.update({"UsedCPUs": round(sum(t.cpus or 0.0 for t in mine), 6),
                          "UsedMemoryBytes": sum(t.memory_bytes or 0 for t in mine), "Tasks": len(mine)})
            host = got[0].host
            if host is not None:
                entry["Host"] = {"UsedCPUs": None if host.cpus is None else round(host.cpus, 6),
                                 "UsedMemoryBytes": host.memory_bytes}
            for tu in mine:
                task = v.task(tu.task_id)
                assert task is not None
                tasks.append({"ID": task.id, "ServiceID": task.service_id,
                              "ServiceName": names.get(task.service_id, ""), "Slot": task.slot, "NodeID": node.id,
                              "CPUs": None if tu.cpus is None else round(tu.cpus, 6), "Window": round(tu.window, 3),
                              "MemoryBytes": tu.memory_bytes, "Source": tu.source})
        nodes.append(entry)
    services = [{"ID": s.service_id, "Name": s.name, "UsedCPUs": round(s.cpus, 6), "UsedMemoryBytes": s.memory_bytes,
                 "Tasks": s.tasks} for s in per_service(v, reports)]
    return {"StaleAfter": stale_after, "Nodes": nodes, "Services": services, "Tasks": tasks}
