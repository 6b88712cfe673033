"""What a node's agent reports of the CPU and memory its tasks actually use, and how often.

The agent measures each running task (its cgroup, or its process tree, or the engine's statistics: see
shoal.agent.usage) and sends one `NodeUsage` with a heartbeat at most every `REPORT_PERIOD` seconds; the leader
keeps the latest report of each node in memory (shoal.manager.usage), never in the Raft log: it is volatile,
and a report older than `STALE_AFTER` seconds is no longer shown. `GET /_shoal/usage` and the `*_used_*` metrics
read it (docs/metrics.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shoal.errors import InvalidArgument

REPORT_PERIOD = 10.0  # seconds between two usage reports of a node (they ride on its heartbeats)
STALE_AFTER = 3 * REPORT_PERIOD + 5.0  # seconds after which the leader drops a node's report unseen


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskUsage:
    task_id: str
    service_id: str = ""
    # CPU cores used, averaged over the `window` seconds before the report (1.0: one core busy); None when the
    # task has only one measurement yet (a rate needs two).
    cpus: float | None = None
    window: float = 0.0
    memory_bytes: int | None = None  # resident memory (a cgroup's usage less its inactive file cache, or RSS)
    source: str = ""  # how it was measured: cgroup2 | cgroup1 | proc | engine | fake


@dataclass(frozen=True, slots=True, kw_only=True)
class HostUsage:
    """The node's host as a whole, tasks and everything else (from /proc/stat and /proc/meminfo)."""

    cpus: float | None = None  # cores busy, averaged over the window
    memory_bytes: int | None = None  # MemTotal - MemAvailable


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeUsage:
    taken_at: float  # the agent's wall clock when it measured (seconds since the epoch)
    tasks: tuple[TaskUsage, ...] = ()
    host: HostUsage | None = None

    def cpus(self) -> float:
        """Cores used by the node's tasks (those with a rate yet)."""
        return sum(t.cpus for t in self.tasks if t.cpus is not None)

    def memory_bytes(self) -> int:
        return sum(t.memory_bytes for t in self.tasks if t.memory_bytes is not None)


def encode(report: NodeUsage) -> bytes:
    """JSON, as it travels with a heartbeat."""
    body: dict[str, Any] = {"taken_at": report.taken_at, "tasks": [
        {"task_id": t.task_id, "service_id": t.service_id, "cpus": t.cpus, "window": t.window,
         "memory_bytes": t.memory_bytes, "source": t.source} for t in report.tasks]}
    if report.host is not None:
        body["host"] = {"cpus": report.host.cpus, "memory_bytes": report.host.memory_bytes}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def _num(v: Any, kind: type[float] | type[int]) -> Any:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (kind is int and not isinstance(v, int)):
        raise InvalidArgument(f"invalid usage report: {v!r} is not a non-negative {kind.__name__}")
    return kind(v)


def decode(data: bytes) -> NodeUsage:
    """The report a heartbeat carried; InvalidArgument for anything else."""
    try:
        raw = json.loads(data)
        host = raw.get("host")
        return NodeUsage(
            taken_at=float(raw["taken_at"]),
            tasks=tuple(TaskUsage(task_id=str(t["task_id"]), service_id=str(t.get("service_id", "")),
                                  cpus=_num(t.get("cpus"), float), window=float(t.get("window", 0.0)),
                                  memory_bytes=_num(t.get("memory_bytes"), int), source=str(t.get("source", "")))
                        for t in raw.get("tasks", ())),
            host=HostUsage(cpus=_num(host.get("cpus"), float), memory_bytes=_num(host.get("memory_bytes"), int))
            if isinstance(host, dict) else None)
    except InvalidArgument:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise InvalidArgument(f"invalid usage report: {e}") from e
