"""What the agent measures of its tasks: cgroup v2 and v1 parsers on fixture trees, the /proc process tree, the
engine's statistics, rates on an injected clock, and the reports the agent hands to its heartbeats."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent import usage as U
from shoal.agent.agent import Agent
from shoal.agent.exec.process import _Cgroups
from shoal.api.dispatch import COMPLETE, Assignments, SessionTerms
from shoal.api.usage import NodeUsage
from shoal.model.objects import NodeDescription, Task, TaskStatus
from shoal.model.state import TaskState
from shoal.tasks import cancel_and_wait
from shoal.testing.clock import VirtualClock, settle
from shoal.testing.fakeexec import FakeBehavior, FakeExecutor


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


# --- cgroup v2 ------------------------------------------------------------------------------------


def test_cgroup_v2_reads_cpu_and_memory_less_inactive_file(tmp_path: Path) -> None:
    write(tmp_path, {"cg/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
                     "cg/memory.current": "104857600\n",
                     "cg/memory.stat": "anon 73400320\nfile 31457280\ninactive_file 20971520\nactive_file 1\n"})
    got = U.read_cgroup_v2(tmp_path / "cg")
    assert got == U.RawUsage(2.5, 100 * 2**20 - 20 * 2**20, "cgroup2")


def test_cgroup_v2_without_the_memory_controller_has_cpu_only(tmp_path: Path) -> None:
    write(tmp_path, {"cg/cpu.stat": "usage_usec 1000\n"})
    assert U.read_cgroup_v2(tmp_path / "cg") == U.RawUsage(0.001, None, "cgroup2")


def test_cgroup_mode_tells_unified_from_per_controller_and_none(tmp_path: Path) -> None:
    write(tmp_path, {"v2/cgroup.controllers": "cpu memory io\n"})
    (tmp_path / "v1" / "memory").mkdir(parents=True)
    (tmp_path / "v1" / "unified").mkdir()  # a hybrid host's unified mount does not make it v2
    (tmp_path / "none").mkdir()
    assert U.cgroup_mode(tmp_path / "v2") == "v2"
    assert U.cgroup_mode(tmp_path / "v1") == "v1"
    assert U.cgroup_mode(tmp_path / "none") == "none"


def test_a_container_cgroup_found_through_its_process_v2(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cgroup", tmp_path / "proc"
    write(cg, {"cgroup.controllers": "cpu memory\n",
               "system.slice/docker-abc.scope/cpu.stat": "usage_usec 4000000\n",
               "system.slice/docker-abc.scope/memory.current": "5000\n",
               "system.slice/docker-abc.scope/memory.stat": "inactive_file 1000\n"})
    write(proc, {"42/cgroup": "0::/system.slice/docker-abc.scope\n"})
    assert U.read_pid_cgroup(42, cg, proc) == U.RawUsage(4.0, 4000, "cgroup2")
    assert U.read_pid_cgroup(43, cg, proc) is None  # gone


# --- cgroup v1 ------------------------------------------------------------------------------------


def test_cgroup_v1_reads_cpuacct_and_memory_less_total_inactive_file(tmp_path: Path) -> None:
    write(tmp_path, {"cpuacct/t/cpuacct.usage": "1500000000\n",
                     "memory/t/memory.usage_in_bytes": "8192\n",
                     "memory/t/memory.stat": "cache 4096\ninactive_file 100\ntotal_inactive_file 2048\n"})
    got = U.read_cgroup_v1(tmp_path / "cpuacct" / "t", tmp_path / "memory" / "t")
    assert got == U.RawUsage(1.5, 6144, "cgroup1")
    assert U.read_cgroup_v1(None, tmp_path / "memory" / "t") == U.RawUsage(None, 6144, "cgroup1")


def test_a_container_cgroup_found_through_its_process_v1_co_mounted(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cgroup", tmp_path / "proc"
    write(cg, {"cpu,cpuacct/docker/abc/cpuacct.usage": "3000000000\n",
               "memory/docker/abc/memory.usage_in_bytes": "10000\n",
               "memory/docker/abc/memory.stat": "total_inactive_file 0\n"})
    write(proc, {"7/cgroup": "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
                             "0::/\n"})
    assert U.pid_cgroups(7, proc)["cpuacct"] == "/docker/abc"
    assert U.pid_cgroups(7, proc)["systemd"] == "/docker/abc"
    assert U.read_pid_cgroup(7, cg, proc) == U.RawUsage(3.0, 10000, "cgroup1")


def test_process_executor_task_cgroups_v1_separate_cpuacct(tmp_path: Path) -> None:
    """A host (like this one) where cpuacct is a hierarchy of its own: the task's memory cgroup has memory, its
    CPU comes from elsewhere; an OOM kill shows in memory.oom_control."""
    base = tmp_path / "cg"
    for c in ("memory", "cpu", "cpuacct"):
        (base / c).mkdir(parents=True)
    cg = _Cgroups("shoal", base)
    assert cg.mode == "v1"
    assert cg.usage("t1") is None  # no cgroup of its own: a task without limits
    write(base, {"memory/shoal/t1/memory.usage_in_bytes": "4096\n", "memory/shoal/t1/memory.stat": "",
                 "memory/shoal/t1/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"})
    assert cg.usage("t1") == U.RawUsage(None, 4096, "cgroup1")
    assert not cg.oom_killed("t1")
    write(base, {"memory/shoal/t1/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"})
    assert cg.oom_killed("t1")


def test_process_executor_task_cgroup_v2(tmp_path: Path) -> None:
    base = tmp_path / "cg"
    write(base, {"cgroup.controllers": "cpu memory\n", "shoal/t1/cpu.stat": "usage_usec 10\n",
                 "shoal/t1/memory.current": "300\n", "shoal/t1/memory.stat": "inactive_file 0\n",
                 "shoal/t1/memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"})
    cg = _Cgroups("shoal", base)
    assert cg.mode == "v2"
    assert cg.usage("t1") == U.RawUsage(0.00001, 300, "cgroup2")
    assert cg.oom_killed("t1")
    assert not cg.oom_killed("t2")


# --- /proc and the engine -------------------------------------------------------------------------


def stat_line(pid: int, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0, rss: int = 0,
              state: str = "S", start: int = 100) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
    # priority nice threads itrealvalue starttime vsize rss ...
    return (f"{pid} (sh (x) y) {state} {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0 "
            f"{start} 1000 {rss} 0 0\n")


def test_process_tree_sums_cpu_and_rss_of_descendants(tmp_path: Path) -> None:
    write(tmp_path, {"10/stat": stat_line(10, 1, 100, 50, cutime=30, cstime=20, rss=10),
                     "11/stat": stat_line(11, 10, 200, 0, rss=5),
                     "12/stat": stat_line(12, 11, 0, 100, rss=1),
                     "13/stat": stat_line(13, 10, 999, 0, rss=99, state="Z"),  # a zombie counts for nothing
                     "20/stat": stat_line(20, 1, 5000, 0, rss=1000),  # another tree
                     "self/stat": "not a pid"})
    table = U.proc_table(tmp_path)
    assert set(table) == {10, 11, 12, 20}
    got = U.tree_usage(10, table, start=100)
    assert got == U.RawUsage((100 + 50 + 30 + 20 + 200 + 100) / U.CLK_TCK, 16 * U.PAGE_SIZE, "proc")
    assert U.tree_usage(10, table, start=999) is None  # the pid is another process now
    assert U.tree_usage(30, table) is None


def test_the_real_proc_of_this_process() -> None:
    got = U.tree_usage(os.getpid(), U.proc_table())
    assert got is not None and got.cpu_seconds is not None and got.cpu_seconds > 0
    assert got.memory_bytes is not None and got.memory_bytes > 1 << 20


def test_merge_fills_what_the_cgroup_lacks() -> None:
    cg = U.RawUsage(None, 100, "cgroup1")
    proc = U.RawUsage(2.0, 999, "proc")
    assert U.merge(cg, proc) == U.RawUsage(2.0, 100, "proc")
    assert U.merge(None, proc) == proc
    assert U.merge(cg, None) == cg


def test_engine_stats_v1_and_v2() -> None:
    v2 = {"cpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}},
          "memory_stats": {"usage": 50_000, "stats": {"inactive_file": 10_000, "anon": 40_000}}}
    v1 = {"cpu_stats": {"cpu_usage": {"total_usage": 500_000_000}},
          "memory_stats": {"usage": 50_000, "stats": {"total_inactive_file": 20_000, "cache": 30_000}}}
    assert U.engine_stats_usage(v2) == U.RawUsage(2.0, 40_000, "engine")
    assert U.engine_stats_usage(v1) == U.RawUsage(0.5, 30_000, "engine")
    # A stopped container's answer: zeros and no memory.
    assert U.engine_stats_usage({"cpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": {}}) is None


# --- rates ----------------------------------------------------------------------------------------


async def test_meter_rates_on_the_injected_clock() -> None:
    clock = VirtualClock()
    meter = U.UsageMeter(clock)
    first = meter.update([("t1", "s1", U.RawUsage(10.0, 100, "proc"))])
    assert first[0].cpus is None and first[0].memory_bytes == 100  # one reading: no rate yet
    await clock.advance(10.0)
    second = meter.update([("t1", "s1", U.RawUsage(15.0, 200, "proc")), ("t2", "s1", U.RawUsage(1.0, 1, "proc"))])
    assert (second[0].cpus, second[0].window, second[0].memory_bytes) == (0.5, 10.0, 200)
    assert second[1].cpus is None
    await clock.advance(5.0)
    # t1's counter went back (its process was replaced): it starts over; t2 ran 2 cores.
    third = {u.task_id: u for u in meter.update([("t1", "s1", U.RawUsage(1.0, 1, "proc")),
                                                  ("t2", "s1", U.RawUsage(11.0, 1, "proc"))])}
    assert third["t1"].cpus is None
    assert third["t2"].cpus == 2.0
    await clock.advance(5.0)
    meter.update([("t2", "s1", U.RawUsage(12.0, 1, "proc"))])
    assert not meter.knows("t1")  # not read this time: forgotten


async def test_meter_baseline_keeps_known_tasks_readings() -> None:
    clock = VirtualClock()
    meter = U.UsageMeter(clock)
    meter.update([("t1", "s", U.RawUsage(0.0, 1, "fake"))])
    await clock.advance(1.0)
    meter.baseline([("t1", "s", U.RawUsage(100.0, 1, "fake")), ("t2", "s", U.RawUsage(3.0, 1, "fake"))])
    assert meter.knows("t2")
    await clock.advance(9.0)
    got = {u.task_id: u.cpus for u in meter.update([("t1", "s", U.RawUsage(10.0, 1, "fake")),
                                                    ("t2", "s", U.RawUsage(7.5, 1, "fake"))])}
    assert got == {"t1": 1.0, "t2": 0.5}  # t1 from its first reading, t2 from its baseline


async def test_host_meter(tmp_path: Path) -> None:
    clock = VirtualClock()
    write(tmp_path, {"stat": "cpu  100 0 100 1000 50 0 0 0 0 0\ncpu0 1 1 1 1\n",
                     "meminfo": "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n"})
    meter = U.HostMeter(clock, tmp_path)
    first = meter.read()
    assert first.cpus is None and first.memory_bytes == 600 * 1024
    await clock.advance(2.0)
    write(tmp_path, {"stat": f"cpu  {100 + U.CLK_TCK} 0 {100 + U.CLK_TCK} 5000 60 0 0 0 0 0\n"})
    assert meter.read().cpus == pytest.approx(1.0)  # 2 s of busy ticks over 2 s: one core


# --- the agent's reports --------------------------------------------------------------------------


class RecordingDispatcher:
    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks
        self.beats: list[NodeUsage | None] = []

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        return SessionTerms(2.0)

    async def heartbeat(self, node_id: str, usage: NodeUsage | None = None) -> SessionTerms:
        self.beats.append(usage)
        return SessionTerms(2.0)

    async def assignments(self, node_id: str) -> AsyncIterator[Assignments]:
        yield Assignments(type=COMPLETE, tasks=tuple(self.tasks))
        await asyncio.Event().wait()

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        pass


async def test_agent_sends_a_report_every_period_on_heartbeats() -> None:
    clock = VirtualClock()
    t = Task(id="t1", service_id="s1", node_id="n1", desired_state=TaskState.RUNNING,
             status=TaskStatus(state=TaskState.ASSIGNED))
    ex = FakeExecutor(clock=clock, behavior=FakeBehavior(exit_code=None, cpus=0.25, memory_bytes=64 << 20))
    d = RecordingDispatcher([t])
    agent = Agent("n1", ex, d, clock, random.Random(1), usage_period=10.0)
    run = asyncio.create_task(agent.run())
    try:
        await clock.advance(30.0)
        await settle()
    finally:
        await cancel_and_wait(run)
        await agent.close()
    reports = [u for u in d.beats if u is not None]
    # At once (the task not running yet: empty), then one each 10 s; heartbeats in between carry none.
    assert len(reports) >= 3 and len(d.beats) > len(reports)
    assert reports[0].tasks == ()
    with_rate = [u for u in reports if u.tasks and u.tasks[0].cpus is not None]
    assert with_rate, reports
    tu = with_rate[0].tasks[0]
    assert (tu.task_id, tu.service_id, tu.memory_bytes, tu.source) == ("t1", "s1", 64 << 20, "fake")
    assert tu.cpus == pytest.approx(0.25)
    # The first report after the task started already had its rate: the baseline was taken within a second.
    assert reports[1].tasks[0].cpus == pytest.approx(0.25)
