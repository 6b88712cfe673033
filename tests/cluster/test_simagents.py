"""The scale benchmark's simulated agents (shoal.testing.simagents) against a real manager, kept small.

Twenty simulated agents in one process join a real `shoal daemon` (drained, so every task lands on them) over
gRPC with mutual TLS, keep their sessions up with heartbeats and run a replicated service's tasks; the test
checks what the benchmark relies on: the manager sees them as ready nodes, spreads the tasks over them, and
the agents' report of running tasks matches what the manager's store says.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shoal.api.dispatch import MEAN_BEAT
from tests.support.managers import free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import Cluster

AGENTS = 20
REPLICAS = 40


class SimProcess:
    """`python -m shoal.testing.simagents` as a child process, its JSON report lines collected by a thread."""

    def __init__(self, manager: str, token: str, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.testing.simagents", "--manager", manager, "--token", token,
             "--count", str(count), "--prefix", "sim", "--report-interval", "0.2"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, out: IO[str]) -> None:
        for line in out:
            self.lines.append(json.loads(line))

    def last(self) -> dict[str, Any]:
        if self.proc.poll() is not None and not self._reader.is_alive():
            raise AssertionError(f"simagents exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}"
                                 if self.proc.stderr else "simagents exited")
        return self.lines[-1] if self.lines else {}

    def close(self) -> int:
        """Close stdin (its stop signal) and wait for it to stop its agents and exit."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reader.join(5)
        return rc


@pytest.fixture
def sim(cluster: Cluster) -> Iterator[SimProcess]:
    p = SimProcess(cluster.addr, cluster.token(), AGENTS)
    try:
        yield p
    finally:
        p.close()


def test_simulated_agents_join_heartbeat_and_run_tasks(cluster: Cluster, sim: SimProcess) -> None:
    wait_until(lambda: sim.last().get("connected") == AGENTS, 60, interval=0.2,
               what=f"{AGENTS} simulated agents connected")
    first = sim.last()
    assert first["joined"] == AGENTS and first["registers"] >= AGENTS

    # The manager knows them as ready, active workers with their own hostnames and certificates.
    def ready_sims() -> set[str]:
        return {n["Description"]["Hostname"] for n in cluster.nodes()
                if n["Description"]["Hostname"].startswith("sim-") and n["Status"]["State"] == "ready"}

    wait_until(lambda: ready_sims() == {f"sim-{i}" for i in range(AGENTS)}, 30, what="every sim node ready")
    nodes = [n for n in cluster.nodes() if n["Description"]["Hostname"].startswith("sim-")]
    assert {n["Spec"]["Role"] for n in nodes} == {"worker"}
    assert len({n["ID"] for n in nodes}) == AGENTS

    # A replicated service lands on them, spread evenly, and each agent reports its tasks running.
    cluster.manager.docker("service", "create", "--detach", "--name", "load", "--replicas", str(REPLICAS),
                           "busybox", "sleep", "3600")
    wait_until(lambda: sum(cluster.placement("load").values()) == REPLICAS, 60, interval=0.2,
               what=f"{REPLICAS} tasks running")
    placement = cluster.placement("load")
    assert placement == {f"sim-{i}": REPLICAS // AGENTS for i in range(AGENTS)}
    running_ids = {t["ID"] for t in cluster.running("load")}
    wait_until(lambda: sim.last().get("running") == REPLICAS, 10, interval=0.2, what="the agents' running count")

    # Sessions stay up: heartbeats keep coming (1 s period) without re-registering.
    before = sim.last()
    wait_until(lambda: sim.last()["heartbeats"] >= before["heartbeats"] + AGENTS, 15, interval=0.2,
               what="a round of heartbeats")
    after = sim.last()
    assert after["registers"] == before["registers"] and after["connected"] == AGENTS
    assert after["errors"] == 0, after["last_error"]
    assert {t["ID"] for t in cluster.running("load")} == running_ids  # nothing was rescheduled meanwhile

    # Stopping the process ends its sessions cleanly and prints a last report.
    assert sim.close() == 0
    assert sim.lines[-1]["running"] == REPLICAS


def test_simagents_command_line_refuses_missing_arguments() -> None:
    cp = subprocess.run([sys.executable, "-m", "shoal.testing.simagents", "--count", "3"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2
    assert "--manager" in cp.stderr and "--token" in cp.stderr


def test_a_manager_past_its_heartbeat_budget_tells_nodes_a_longer_period(tmp_path: Path) -> None:
    """`--max-heartbeats-per-second 4` with 21 nodes (the manager and 20 agents): the configured period (1 s)
    would bring 21 heartbeats a second, so the nodes are told 21 / (4 * 0.875) = 6 s, and they keep their
    sessions on it (none registers again)."""
    c = Cluster(tmp_path)
    c.manager = ShoalNode(tmp_path / "mgr", hostname="mgr", extra_args=("--max-heartbeats-per-second", "4"))
    c.start()
    sim = SimProcess(c.addr, c.token(), AGENTS)
    try:
        wait_until(lambda: sim.last().get("connected") == AGENTS, 60, interval=0.2,
                   what=f"{AGENTS} simulated agents connected")
        status, body = c.manager.api("GET", "/_shoal/heartbeats")
        assert status == 200, body
        grown = (AGENTS + 1) / (4 * MEAN_BEAT)
        assert body["period"] == pytest.approx(grown)
        first = sim.last()
        # Two rounds of heartbeats at the grown period, past three of the configured one.
        wait_until(lambda: sim.last()["heartbeats"] >= first["heartbeats"] + 2 * AGENTS, 4 * grown, interval=0.5,
                   what="two rounds of heartbeats")
        last = sim.last()
        assert last["registers"] == first["registers"] and last["errors"] == 0, last
        assert {n["Status"]["State"] for n in c.nodes()} == {"ready"}
    finally:
        sim.close()
        c.stop()


def test_a_manager_past_its_registration_rate_tells_nodes_when_to_come_back(tmp_path: Path) -> None:
    """`--max-registrations-per-second 1`: 20 agents joining together register over about 20 s, not at once.
    Each registration the leader deferred is one the agents sent again (at the slot they were told), none is
    lost, and every node ends up ready with a session."""
    metrics = f"127.0.0.1:{free_port()}"
    c = Cluster(tmp_path)
    c.manager = ShoalNode(tmp_path / "mgr", hostname="mgr",
                          extra_args=("--max-registrations-per-second", "1", "--metrics-addr", metrics))
    c.start()
    sim = SimProcess(c.addr, c.token(), AGENTS)

    def deferred() -> float:
        text = requests.get(f"http://{metrics}/metrics", timeout=10).text
        return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == "shoal_dispatcher_registrations_deferred_total")

    try:
        wait_until(lambda: sim.last().get("connected") == AGENTS, 120, interval=0.2,
                   what=f"{AGENTS} simulated agents connected")
        last = sim.last()
        # Joined together, the agents came faster than one a second: most of them were told to come back.
        assert deferred() >= AGENTS // 2
        assert last["registers"] == AGENTS + deferred(), last  # each deferral was sent again, once
        wait_until(lambda: {n["Status"]["State"] for n in c.nodes()} == {"ready"}, 30, what="every node ready")
        assert len(c.nodes()) == AGENTS + 1
    finally:
        sim.close()
        c.stop()
