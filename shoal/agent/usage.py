"""Measuring what tasks actually use: cumulative CPU time and resident memory, read from cgroups (v2 or v1,
whichever the host has) or from /proc, and turned into rates on an injected clock.

Sources, best first:

- a cgroup of the task's own (a container's, or the one the process executor made for a task with limits):
  cgroup v2 `cpu.stat` (`usage_usec`) and `memory.current` less `memory.stat`'s `inactive_file`; cgroup v1
  `cpuacct.usage` (nanoseconds) and `memory.usage_in_bytes` less `total_inactive_file` (the page cache the
  kernel reclaims first: what `docker stats` leaves out too);
- the process tree under the task's main process, from /proc: `utime + stime + cutime + cstime` of every
  process (a reaped child's time moves into its parent's `c*time`, so the sum keeps growing) and their RSS
  (shared pages counted once per process: an upper bound);
- the engine's statistics (`GET /containers/{id}/stats?stream=false&one-shot=true`), for a container whose
  process this host cannot see (shoal.agent.exec.docker).

A source may know only one of the two (a v1 task cgroup made for a memory limit has no CPU accounting): the
reader fills the other from /proc. `UsageMeter` keeps each task's previous CPU reading and reports the average
cores used since then; the first reading of a task gives memory only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shoal.api.usage import HostUsage, TaskUsage
from shoal.clock import Clock

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_ROOT = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class RawUsage:
    """One reading of a task: CPU seconds used since it started (cumulative) and resident memory now."""

    cpu_seconds: float | None
    memory_bytes: int | None
    source: str  # cgroup2 | cgroup1 | proc | engine | fake (the CPU's source when the two differ)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def stat_field(text: str | None, key: str) -> int | None:
    """A `key value` line of a cgroup stat file (cpu.stat, memory.stat)."""
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return _int(v)
    return None


# --- cgroups --------------------------------------------------------------------------------------


def cgroup_mode(root: Path = CGROUP_ROOT) -> str:
    """`v2` when `root` is a unified hierarchy, `v1` when it holds per-controller hierarchies (a hybrid host's
    `unified/` beside them does not count: the controllers are v1's), else `none`."""
    if (root / "cgroup.controllers").exists():
        return "v2"
    if any((root / c).is_dir() for c in ("memory", "cpuacct", "cpu,cpuacct")):
        return "v1"
    return "none"


def read_cgroup_v2(d: Path) -> RawUsage:
    """A v2 cgroup directory: cpu.stat is always there, memory.current only with the memory controller."""
    usec = stat_field(read_text(d / "cpu.stat"), "usage_usec")
    current = _int(read_text(d / "memory.current"))
    memory = None
    if current is not None:
        inactive = stat_field(read_text(d / "memory.stat"), "inactive_file") or 0
        memory = current - inactive if inactive <= current else current
    return RawUsage(None if usec is None else usec / 1e6, memory, "cgroup2")


def read_cgroup_v1(cpuacct: Path | None, memory: Path | None) -> RawUsage:
    """A task's v1 cgroups: its cpuacct directory (`cpuacct.usage`, nanoseconds) and its memory directory."""
    ns = _int(read_text(cpuacct / "cpuacct.usage")) if cpuacct is not None else None
    mem = None
    if memory is not None:
        usage = _int(read_text(memory / "memory.usage_in_bytes"))
        if usage is not None:
            inactive = stat_field(read_text(memory / "memory.stat"), "total_inactive_file") or 0
            mem = usage - inactive if inactive <= usage else usage
    return RawUsage(None if ns is None else ns / 1e9, mem, "cgroup1")


def v1_hierarchy(root: Path, controller: str) -> Path | None:
    """The mount of a v1 controller: `root/<controller>`, or a co-mounted `root/cpu,cpuacct`."""
    for name in (controller, "cpu,cpuacct" if controller in ("cpu", "cpuacct") else ""):
        if name and (root / name).is_dir():
            return root / name
    return None


def pid_cgroups(pid: int, proc: Path = PROC_ROOT) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controller: path}; the v2 (unified) entry is under "" (its line is `0::/path`)."""
    out: dict[str, str] = {}
    for line in (read_text(proc / str(pid) / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for c in parts[1].split(",") if parts[1] else [""]:
            out[c.removeprefix("name=")] = parts[2]
    return out


def read_pid_cgroup(pid: int, root: Path = CGROUP_ROOT, proc: Path = PROC_ROOT) -> RawUsage | None:
    """The usage of the cgroup(s) a process is in (a container's main process: the container's cgroup), on
    either hierarchy; None when the process is gone or its cgroup cannot be read."""
    groups = pid_cgroups(pid, proc)
    if not groups:
        return None
    mode = cgroup_mode(root)
    if mode == "v2" and "" in groups:
        d = root / groups[""].lstrip("/")
        got = read_cgroup_v2(d) if d.is_dir() else None
        return got if got is not None and (got.cpu_seconds is not None or got.memory_bytes is not None) else None
    if mode == "v1":
        dirs: dict[str, Path | None] = {}
        for c in ("cpuacct", "memory"):
            h = v1_hierarchy(root, c)
            rel = groups.get(c)
            dirs[c] = h / rel.lstrip("/") if h is not None and rel is not None else None
        got = read_cgroup_v1(dirs["cpuacct"], dirs["memory"])
        return got if got.cpu_seconds is not None or got.memory_bytes is not None else None
    return None


def engine_stats_usage(stats: Mapping[str, object]) -> RawUsage | None:
    """One answer of the engine's `GET /containers/{id}/stats?stream=false&one-shot=true`:
    `cpu_stats.cpu_usage.total_usage` (nanoseconds) and `memory_stats.usage` less the inactive file cache
    (`inactive_file` on cgroup v2, `total_inactive_file` on v1), as `docker stats` computes it."""
    cpu_stats = stats.get("cpu_stats")
    mem_stats = stats.get("memory_stats")
    cpu: float | None = None
    if isinstance(cpu_stats, dict):
        total = (cpu_stats.get("cpu_usage") or {}).get("total_usage")
        if isinstance(total, int) and total > 0:
            cpu = total / 1e9
    mem: int | None = None
    if isinstance(mem_stats, dict) and isinstance(mem_stats.get("usage"), int):
        usage = int(mem_stats["usage"])
        detail = mem_stats.get("stats") or {}
        inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0)) if isinstance(detail, dict) \
            else 0
        mem = usage - inactive if isinstance(inactive, int) and 0 <= inactive <= usage else usage
    if cpu is None and mem is None:
        return None
    return RawUsage(cpu, mem, "engine")


# --- /proc ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcInfo:
    ppid: int
    ticks: int  # utime + stime + cutime + cstime
    rss_pages: int
    start: int


def _parse_stat(data: str) -> ProcInfo | None:
    try:
        rest = data[data.rindex(")") + 2:].split()
        # fields after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ...
        # starttime(19) vsize(20) rss(21)
        if rest[0] in ("Z", "X"):
            return None
        return ProcInfo(ppid=int(rest[1]), ticks=sum(int(x) for x in rest[11:15]), rss_pages=int(rest[21]),
                     start=int(rest[19]))
    except (ValueError, IndexError):
        return None


def proc_table(proc: Path = PROC_ROOT) -> dict[int, ProcInfo]:
    """Every live process of the host: one read of each /proc/<pid>/stat."""
    table: dict[int, ProcInfo] = {}
    try:
        entries = list(proc.iterdir())
    except OSError:
        return table
    for e in entries:
        if not e.name.isdigit():
            continue
        p = _parse_stat(read_text(e / "stat") or "")
        if p is not None:
            table[int(e.name)] = p
    return table


def tree_usage(pid: int, table: Mapping[int, ProcInfo], start: int | None = None) -> RawUsage | None:
    """CPU and RSS of `pid` and all its descendants (None when `pid` is gone, or is another process now than
    the one started at `start`, its /proc start time)."""
    top = table.get(pid)
    if top is None or (start is not None and top.start != start):
        return None
    children: dict[int, list[int]] = {}
    for p, info in table.items():
        children.setdefault(info.ppid, []).append(p)
    ticks = rss = 0
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        info = table[p]
        ticks += info.ticks
        rss += info.rss_pages
        todo.extend(children.get(p, ()))
    return RawUsage(ticks / CLK_TCK, rss * PAGE_SIZE, "proc")


def merge(first: RawUsage | None, fallback: RawUsage | None) -> RawUsage | None:
    """`first`'s readings, each missing one taken from `fallback`."""
    if first is None:
        return fallback
    if fallback is None:
        return first
    cpu = first.cpu_seconds if first.cpu_seconds is not None else fallback.cpu_seconds
    mem = first.memory_bytes if first.memory_bytes is not None else fallback.memory_bytes
    return RawUsage(cpu, mem, first.source if first.cpu_seconds is not None else fallback.source)


# --- rates ----------------------------------------------------------------------------------------


class UsageMeter:
    """Turns readings into `TaskUsage`: each task's CPU rate is the CPU seconds it used since its previous
    reading over the clock's seconds between the two. A counter that went back (the task's process was
    replaced under the same task, a cgroup recreated) starts over. Tasks not read this time are forgotten."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._last: dict[str, tuple[float, float]] = {}  # task -> (monotonic time, cpu seconds)

    def knows(self, task_id: str) -> bool:
        """Whether the task has a CPU reading to measure the next one from."""
        return task_id in self._last

    def baseline(self, readings: Iterable[tuple[str, str, RawUsage]]) -> None:
        """A first reading of tasks the meter does not know yet (the others keep theirs)."""
        now = self.clock.monotonic()
        for task_id, _, raw in readings:
            if raw.cpu_seconds is not None and task_id not in self._last:
                self._last[task_id] = (now, raw.cpu_seconds)

    def update(self, readings: Iterable[tuple[str, str, RawUsage]]) -> tuple[TaskUsage, ...]:
        """`readings`: (task id, service id, reading) of every task measured now."""
        now = self.clock.monotonic()
        out: list[TaskUsage] = []
        last: dict[str, tuple[float, float]] = {}
        for task_id, service_id, raw in readings:
            cpus: float | None = None
            window = 0.0
            if raw.cpu_seconds is not None:
                prev = self._last.get(task_id)
                if prev is not None and now > prev[0] and raw.cpu_seconds >= prev[1]:
                    window = now - prev[0]
                    cpus = (raw.cpu_seconds - prev[1]) / window
                last[task_id] = (now, raw.cpu_seconds)
            out.append(TaskUsage(task_id=task_id, service_id=service_id, cpus=cpus, window=window,
                                 memory_bytes=raw.memory_bytes, source=raw.source))
        self._last = last
        return tuple(out)


class HostMeter:
    """The host's busy cores (from /proc/stat's `cpu` line: everything but idle and iowait, between two
    readings) and used memory (MemTotal - MemAvailable)."""

    def __init__(self, clock: Clock, proc: Path = PROC_ROOT) -> None:
        self.clock = clock
        self.proc = proc
        self._last: tuple[float, int] | None = None  # monotonic time, busy ticks

    def read(self) -> HostUsage:
        now = self.clock.monotonic()
        cpus: float | None = None
        busy = _busy_ticks(read_text(self.proc / "stat"))
        if busy is not None:
            if self._last is not None and now > self._last[0] and busy >= self._last[1]:
                cpus = (busy - self._last[1]) / CLK_TCK / (now - self._last[0])
            self._last = (now, busy)
        return HostUsage(cpus=cpus, memory_bytes=_mem_used(read_text(self.proc / "meminfo")))


def _busy_ticks(stat: str | None) -> int | None:
    for line in (stat or "").splitlines():
        if line.startswith("cpu "):
            try:
                v = [int(x) for x in line.split()[1:]]
            except ValueError:
                return None
            # user nice system idle iowait irq softirq steal (guest time is inside user already)
            return sum(v[:8]) - v[3] - (v[4] if len(v) > 4 else 0)
    return None


def _mem_used(meminfo: str | None) -> int | None:
    fields: dict[str, int] = {}
    for line in (meminfo or "").splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        if parts and parts[0].isdigit():
            fields[k] = int(parts[0]) * 1024
    if "MemTotal" not in fields or "MemAvailable" not in fields:
        return None
    return max(0, fields["MemTotal"] - fields["MemAvailable"])
