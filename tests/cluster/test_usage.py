"""What tasks actually use, end to end with real daemons (process executor): a worker's agent measures a
CPU-burning task and reports it over gRPC with its heartbeats; the manager's `/_shoal/usage` and `/metrics`
show it, beside the restarts of a crashing service by reason, and (where the host lets the executor make memory
cgroups) of a task killed at its memory limit."""

from __future__ import annotations

import contextlib
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.agent.exec.process import _Cgroups
from tests.support.managers import ManagerCluster, free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import Cluster

pytestmark = [pytest.mark.timeout(240)]

BURN = ("sh", "-c", "while :; do :; done")
# Writes 256 MiB (every page touched) under a 32 MiB limit: the kernel's OOM killer ends it.
HOG = (sys.executable, "-c", "b = b'x' * (256 << 20); import time; time.sleep(60)")


def remove_task_cgroups(task_ids: list[str]) -> None:
    """The cgroups the process executor made for the tasks (a stopped daemon leaves its tasks' behind)."""
    base = Path("/sys/fs/cgroup")
    for tid in task_ids:
        for d in (base / "shoal" / tid, *(base / c / "shoal" / tid for c in ("memory", "cpu", "cpu,cpuacct"))):
            if d.is_dir():
                wait_until(lambda d=d: not (d / "cgroup.procs").read_text().strip(), 10,
                           what=f"{d} emptied")
                with contextlib.suppress(OSError):
                    d.rmdir()


def scrape(addr: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    want = set(labels.items())
    for (n, ls), v in samples.items():
        if n == name and want <= ls:
            return v
    return None


def test_a_burning_task_shows_in_usage_and_metrics(tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not on the PATH")
    metrics_addr = f"127.0.0.1:{free_port()}"
    c = Cluster(tmp_path)
    c.manager = ShoalNode(tmp_path / "mgr", hostname="mgr", extra_args=("--metrics-addr", metrics_addr))
    memory_cgroups = _Cgroups("shoal").mode != "none"
    worker: ShoalNode | None = None
    try:
        c.start()
        worker = c.add_worker("w1")
        c.manager.docker("service", "create", "--detach", "--name", "burn", "--limit-memory", "256M", "busybox",
                         *BURN)
        c.manager.docker("service", "create", "--detach", "--name", "crash", "--restart-delay", "100ms", "busybox",
                         "sh", "-c", "sleep 0.2; exit 3")
        if memory_cgroups:
            c.manager.docker("service", "create", "--detach", "--name", "hog", "--limit-memory", "32M",
                             "--restart-delay", "100ms", "busybox", *HOG)
        wid = c.node_id("w1")

        def burning() -> dict[str, Any] | None:
            status, doc = c.manager.api("GET", "/_shoal/usage")
            assert status == 200, doc
            tasks = [t for t in doc["Tasks"] if t["ServiceName"] == "burn" and (t["CPUs"] or 0) > 0.1]
            return doc if tasks else None

        doc = wait_until(burning, 90, interval=0.5, what="the burning task's CPU in /_shoal/usage")
        assert doc is not None
        task = next(t for t in doc["Tasks"] if t["ServiceName"] == "burn")
        assert task["NodeID"] == wid and task["MemoryBytes"] > 0 and task["Window"] > 0
        assert task["Source"] in ("cgroup1", "cgroup2", "proc")
        nodes = {n["Hostname"]: n for n in doc["Nodes"]}
        assert nodes["w1"]["Reported"] and nodes["w1"]["UsedCPUs"] > 0.1 and nodes["w1"]["UsedMemoryBytes"] > 0
        assert nodes["w1"]["Host"]["UsedMemoryBytes"] > 0
        assert nodes["mgr"]["Reported"] and nodes["mgr"]["Tasks"] == 0  # drained: its own agent reports nothing
        burn = next(s for s in doc["Services"] if s["Name"] == "burn")
        assert burn["UsedCPUs"] > 0.1 and burn["Tasks"] == 1

        def metrics_seen() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            s = scrape(metrics_addr)
            cpus = sample(s, "shoal_service_used_cpus", service="burn")
            restarts = sample(s, "shoal_task_restarts_total", service="crash", reason="exit_nonzero")
            oom = sample(s, "shoal_task_failures_total", service="hog", reason="oom_killed") if memory_cgroups else 1
            return s if cpus is not None and cpus > 0.1 and (restarts or 0) >= 1 and (oom or 0) >= 1 else None

        s = wait_until(metrics_seen, 60, interval=0.5, what="burn's CPU, crash's and hog's restarts in /metrics")
        assert s is not None
        assert (sample(s, "shoal_node_used_cpus", hostname="w1") or 0) > 0.1
        assert (sample(s, "shoal_node_used_memory_bytes", hostname="w1") or 0) > 0
        assert (sample(s, "shoal_service_used_memory_bytes", service="burn") or 0) > 0
        assert (sample(s, "shoal_task_failures_total", service="crash", reason="exit_nonzero") or 0) >= 1
        assert (sample(s, "shoal_dispatcher_heartbeats_total") or 0) > 0
        assert sample(s, "shoal_node_heartbeat_age_seconds", hostname="w1") is not None
        assert (sample(s, "shoal_raft_fsync_seconds_count") or 0) > 0
        assert (sample(s, "shoal_scheduler_placement_delay_seconds_count") or 0) >= 2
        assert (sample(s, "shoal_agent_heartbeat_latency_seconds_count") or 0) > 0
        assert sample(s, "shoal_scheduler_unplaceable_tasks", service="burn") == 0
        # A worker is no manager: dockerd's answer for a manager-only endpoint.
        status, body = worker.api("GET", "/_shoal/usage")
        assert status == 503 and "not a swarm manager" in body["message"]
    finally:
        c.stop()
        if worker is not None:
            remove_task_cgroups([d.name for d in worker.task_dirs()])


def test_usage_from_any_manager_and_after_a_leader_change(tmp_path: Path) -> None:
    """Three managers, each running a task: a follower relays `/_shoal/usage` to the leader, whose memory holds
    every node's report (the followers' own agents report to it over gRPC). The reports are not replicated: once
    the leader is stopped, the new one shows the survivors again from their next reports."""
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not on the PATH")
    with ManagerCluster(tmp_path, 3) as mc:
        mc.api_any("POST", "/v1.47/services/create", {
            "Name": "idle", "Mode": {"Replicated": {"Replicas": 3}},
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "600"]},
                             "Placement": {"MaxReplicas": 1}}})

        def reported(via: ShoalNode, hosts: set[str]) -> dict[str, Any] | None:
            status, doc = via.api("GET", "/_shoal/usage")
            assert status == 200, doc
            nodes = {n["Hostname"]: n for n in doc["Nodes"] if n["Reported"]}
            rated = {t["NodeID"] for t in doc["Tasks"] if t["CPUs"] is not None and t["MemoryBytes"]}
            ok = hosts <= set(nodes) and all(nodes[h]["NodeID"] in rated for h in hosts)
            return doc if ok else None

        leader = mc.leader()
        follower = next(n for n in mc.live() if n is not leader)
        everyone = {n.hostname for n in mc.live()}
        doc = wait_until(lambda: reported(follower, everyone), 60, interval=0.5,
                         what="every manager's task measured, seen through a follower")
        assert doc is not None
        assert {s["Name"]: s["Tasks"] for s in doc["Services"]} == {"idle": 3}

        leader.stop()
        survivors = [n for n in mc.live() if n is not leader]
        new = mc.leader(among=survivors, timeout=30)
        hosts = {n.hostname for n in survivors}
        doc = wait_until(lambda: reported(new, hosts), 60, interval=0.5,
                         what="the survivors' reports on the new leader")
        assert doc is not None
        assert not next(n for n in doc["Nodes"] if n["Hostname"] == leader.hostname)["Reported"]
