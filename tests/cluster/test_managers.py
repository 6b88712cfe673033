"""Several managers (issue 5): real `shoal daemon` processes on loopback replicating the store with Raft, joined
and changed with the stock CLI. Every request may go to any manager; the ones that are not the leader forward it.
"""

from __future__ import annotations

import base64
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from shoal.testing.linearizability import Budget, History, check
from tests.cluster.conftest import _require_cli
from tests.support import history as hist
from tests.support.managers import ManagerCluster
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("managers")]

SLEEP = ("sleep", "3600")


@pytest.fixture
def three(tmp_path: Path) -> Iterator[ManagerCluster]:
    _require_cli()
    with ManagerCluster(tmp_path, 3) as mc:
        yield mc


def tasks_of(n: ShoalNode, service: str) -> list[dict[str, Any]]:
    status, body = n.api("GET", "/v1.47/tasks?filters=" + quote(json.dumps({"service": [service]})))
    assert status == 200, body
    return list(body)


def running(n: ShoalNode, service: str) -> list[dict[str, Any]]:
    return [t for t in tasks_of(n, service) if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]


def create_config(n: ShoalNode, name: str) -> tuple[int, Any]:
    body = {"Name": name, "Data": base64.b64encode(name.encode()).decode()}
    return n.api("POST", "/v1.47/configs/create", json.dumps(body).encode())


@pytest.fixture
def three_default_heartbeat(tmp_path: Path) -> Iterator[ManagerCluster]:
    """Swarm's default 5 s heartbeat: a node is down only after 15 s silent, so a daemon stalled a few seconds
    by a loaded machine does not turn a placement test into a failure test."""
    _require_cli()
    with ManagerCluster(tmp_path, 3, heartbeat="") as mc:
        yield mc


def test_three_managers_serve_one_swarm_from_any_of_them(three_default_heartbeat: ManagerCluster) -> None:
    mc = three_default_heartbeat
    lead = mc.leader()
    for n in mc.nodes:
        st = mc.manager_status(n)
        assert sorted(st.values()) == ["Leader", "Reachable", "Reachable"], st
        assert st[lead.hostname] == "Leader"
        table = n.docker("node", "ls").stdout
        (own,) = [line for line in table.splitlines() if " * " in line]
        assert n.hostname in own
        swarm = json.loads(n.docker("info", "--format", "{{json .Swarm}}").stdout)
        assert (swarm["ControlAvailable"], swarm["Managers"], swarm["Nodes"]) == (True, 3, 3)

    # Read-your-writes across managers: a write acknowledged by one is seen by the next request to another.
    for i in range(30):
        a, b = mc.nodes[i % 3], mc.nodes[(i + 1) % 3]
        status, body = create_config(a, f"ryw{i}")
        assert status == 201, body
        status, got = b.api("GET", f"/v1.47/configs/{body['ID']}")
        assert status == 200 and got["Spec"]["Name"] == f"ryw{i}", got

    mc.wait_healthy()
    lead = mc.leader()
    follower = next(n for n in mc.nodes if n is not lead)
    follower.docker("service", "create", "--detach", "--name", "web", "--replicas", "6", "busybox", *SLEEP)
    tasks = wait_until(lambda: len(running(lead, "web")) == 6 and running(lead, "web"), 60, what="6 running tasks")
    per_node: dict[str, int] = {}
    for t in tasks:
        per_node[t["NodeID"]] = per_node.get(t["NodeID"], 0) + 1
    # Every manager's agent runs tasks, spread evenly; if not, say what the nodes and the tasks went through.
    assert sorted(per_node.values()) == [2, 2, 2], (
        per_node, {h: x["Status"] for h, x in mc.node_ls(lead).items()},
        [(t["NodeID"], t["Status"]["State"], t["Status"].get("Err", "")) for t in tasks_of(lead, "web")])
    ls = follower.docker("service", "ls").stdout
    assert "web" in ls and "6/6" in ls

    # Every replica applied the same state.
    def converged() -> bool:
        states = [mc.raft(n) for n in mc.nodes]
        return len({json.dumps(s["objects"], sort_keys=True) for s in states}) == 1 and \
            len({s["applied"] for s in states}) == 1

    wait_until(converged, 20, what="the three stores to agree")


def test_kill9_of_the_leader_during_a_stream_of_writes_loses_no_acknowledged_write(
        three: ManagerCluster, figure: Callable[[str], None]) -> None:
    """Clients write configs and a service label through every manager while the leader is killed; every
    acknowledged write survives, a new leader takes over within a few election timeouts, and the whole history
    of creates, label writes and reads (each client on its own thread) is linearizable."""
    mc = three
    old = mc.leader()
    mc.nodes[0].docker("service", "create", "--detach", "--name", "counter", "--label", "n=0", "busybox", *SLEEP)
    h = History()
    killed = threading.Event()
    stop = threading.Event()
    created: list[str] = []
    kill_at: list[float] = []
    first_after_kill: list[float] = []
    latencies: list[float] = []

    def targets() -> list[ShoalNode]:
        return [n for n in mc.nodes if not (killed.is_set() and n is old)]

    def writer(name: str) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            ts = targets()
            n = ts[i % len(ts)]
            t0 = time.monotonic()
            if i % 4 == 0:
                status = hist.write_label(h, name, n, "counter", f"{name}-{i}")
            else:
                status = hist.create_config(h, name, n, f"{name}-{i}")
                if status == 201:
                    created.append(f"{name}-{i}")
                    # Read it back at once through another manager: a stale replica would answer 404.
                    hist.read_config(h, name, ts[(i + 1) % len(ts)], f"{name}-{i}")
            t1 = time.monotonic()
            if status in (200, 201):
                latencies.append(t1 - t0)
                if kill_at and not first_after_kill and t0 >= kill_at[0]:
                    first_after_kill.append(t1 - kill_at[0])

    def reader() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            ts = targets()
            n = ts[(i * 7) % len(ts)]
            if i % 3 == 0:
                hist.read_label(h, "reader", n, "counter")
            elif created:
                hist.read_config(h, "reader", n, created[-1 - (i % min(len(created), 5))])

    threads = [threading.Thread(target=writer, args=(f"w{k}",), daemon=True) for k in (1, 2)]
    threads.append(threading.Thread(target=reader, daemon=True))
    for th in threads:
        th.start()
    try:
        wait_until(lambda: len(created) >= 60, 60, what="writes before the kill")
        before = len(created)
        kill_at.append(time.monotonic())
        killed.set()
        old.kill9()
        wait_until(lambda: len(created) >= before + 60, 60, what="writes to resume after the kill")
    finally:
        stop.set()
        for th in threads:
            th.join(60)
    failover = first_after_kill[0]
    lat = sorted(latencies)
    ops = h.operations()
    figure(f"raft, 3 managers: leader kill -9 -> first accepted write {failover:.2f} s; write latency p50 "
           f"{statistics.median(lat) * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms over {len(lat)} "
           f"acknowledged writes; {len(ops)} operations recorded")
    assert failover < 15.0  # a few election timeouts plus the client's retries, not Swarm's tens of seconds

    survivors = [n for n in mc.nodes if n is not old]
    new = mc.leader(survivors)
    assert new is not old
    wait_until(lambda: mc.manager_status(new)[old.hostname] == "Unreachable", 20, what="the old leader unreachable")
    status, configs, _ = mc.api_any("GET", "/v1.47/configs", order=survivors)
    assert status == 200
    names = {c["Spec"]["Name"] for c in configs}
    missing = [a for a in created if a not in names]
    assert not missing, f"acknowledged writes lost: {missing[:10]}"
    for n in survivors:  # the final state, read through each survivor, ends the history
        for name in created[-3:]:
            hist.read_config(h, "final", n, name)
        hist.read_label(h, "final", n, "counter")
    result = check(h, hist.model(), budget=Budget(max_seconds=60))
    assert result.ok, result.explain()

    # The old leader comes back as a follower and catches up.
    old.start()
    wait_until(lambda: mc.manager_status(new).get(old.hostname) == "Reachable", 30, what="the old leader back")
    target = mc.raft(new)["commit"]
    wait_until(lambda: mc.raft(old).get("applied", 0) >= target, 30, what="the old leader to catch up")
    assert mc.raft(old)["objects"]["config"] == len(configs)


def test_promote_demote_remove_and_the_quorum_refusals(tmp_path: Path) -> None:
    _require_cli()
    with ManagerCluster(tmp_path, 1) as mc:
        m1 = mc.nodes[0]
        cp = m1.docker("node", "demote", "m1", check=False)
        assert "attempting to demote the last manager of the swarm" in cp.stderr
        cp = m1.docker("swarm", "leave", check=False)
        assert "Removing the last manager erases all current state of the swarm" in cp.stderr

        w1, w2 = mc.new_node("w1"), mc.new_node("w2")
        mc.join(w1, "worker")
        mc.join(w2, "worker")
        cp = w1.docker("node", "ls", check=False)
        assert "Worker nodes can't be used to view or modify cluster state" in cp.stderr
        m1.docker("node", "promote", "w1", "w2")
        wait_until(lambda: sorted(mc.manager_status(m1).values()) == ["Leader", "Reachable", "Reachable"], 60,
                   what="both promoted workers to be reachable managers")
        assert len(mc.raft(w1)["voters"]) == 3
        assert "w2" in w1.docker("node", "ls").stdout  # w1 answers as a manager now

        cp = m1.docker("node", "rm", "--force", "w2", check=False)
        assert "is a cluster manager and is a member of the raft cluster. It must be demoted to worker " \
               "before removal" in cp.stderr
        cp = w1.docker("swarm", "leave", check=False)
        assert "You are attempting to leave the swarm on a node that is participating as a manager." in cp.stderr
        assert "--force-new-cluster" in cp.stderr

        w2.kill9()
        wait_until(lambda: mc.manager_status(m1)["w2"] == "Unreachable", 20, what="w2 unreachable")
        cp = m1.docker("node", "demote", "w1", check=False)
        assert "can't remove member from the raft: this would result in a loss of quorum" in cp.stderr
        cp = w1.docker("swarm", "leave", check=False)
        assert "Removing this node leaves 1 managers out of 3. Without a Raft quorum your swarm will be " \
               "inaccessible." in cp.stderr

        # The dead manager can be demoted (the two others stay a quorum), then removed.
        m1.docker("node", "demote", "w2")
        wait_until(lambda: mc.manager_status(m1)["w2"] == "", 20, what="w2 out of Raft and a worker")
        assert len(mc.raft(m1)["voters"]) == 2
        wait_until(lambda: mc.node_ls(m1)["w2"]["Status"]["State"] == "down", 30, what="w2 down")
        m1.docker("node", "rm", "w2")
        assert "w2" not in mc.node_ls(m1)

        # A live manager demoted becomes a worker by itself, keeping its tasks.
        m1.docker("service", "create", "--detach", "--name", "pinned", "--constraint", "node.hostname==w1",
                  "busybox", *SLEEP)
        (t,) = wait_until(lambda: running(m1, "pinned"), 30, what="the pinned task")
        m1.docker("node", "demote", "w1")
        wait_until(lambda: mc.manager_status(m1)["w1"] == "" and
                   mc.node_ls(m1)["w1"]["Status"]["State"] == "ready", 60, what="w1 to be a ready worker")
        wait_until(lambda: "Worker nodes can't be used" in w1.docker("node", "ls", check=False).stderr, 30,
                   what="w1 to refuse manager requests")
        assert len(mc.raft(m1)["voters"]) == 1
        (again,) = wait_until(lambda: running(m1, "pinned"), 30, what="the pinned task still running")
        assert again["ID"] == t["ID"]


def test_a_wiped_manager_rejoins_and_catches_up_by_snapshot(three: ManagerCluster) -> None:
    mc = three
    lead = mc.leader()
    lead.docker("swarm", "update", "--snapshot-interval", "20")
    mc.set_log_entries_for_slow_followers(5)  # else the leader keeps the whole log (160 writes) as its tail
    m3 = next(n for n in mc.nodes if n is not lead)
    for i in range(120):
        status, body, _ = mc.api_any("POST", "/v1.47/configs/create",
                                     {"Name": f"pre{i}", "Data": base64.b64encode(b"x").decode()})
        assert status == 201, body
    wait_until(lambda: mc.raft(lead)["snapshot_index"] > 1, 20, what="the leader to compact its log")

    m3.kill9()
    survivor = next(n for n in mc.nodes if n not in (lead, m3))
    wait_until(lambda: mc.manager_status(lead)[m3.hostname] == "Unreachable", 20, what="m3 unreachable")
    lead.docker("node", "demote", m3.hostname)
    wait_until(lambda: mc.node_ls(lead)[m3.hostname]["Status"]["State"] == "down", 30, what="m3 down")
    lead.docker("node", "rm", m3.hostname)
    for i in range(40):  # more writes while it is gone, past another snapshot
        status, body, _ = mc.api_any("POST", "/v1.47/configs/create",
                                     {"Name": f"post{i}", "Data": base64.b64encode(b"x").decode()},
                                     order=[lead, survivor])
        assert status == 201, body

    m3.stop()
    import shutil

    shutil.rmtree(m3.data_dir)
    m3.start()
    mc.join(m3, "manager", via=survivor)  # through a follower: it hands the join to the leader
    st = mc.raft(m3)
    assert st["snapshots_installed"] >= 1, st  # the leader's log no longer starts at 1: it had to send a snapshot
    wait_until(lambda: mc.raft(m3)["objects"]["config"] == 160, 30, what="m3's store to hold every config")
    assert sorted(mc.manager_status(lead).values()) == ["Leader", "Reachable", "Reachable"]
    cp = m3.docker("config", "ls", "-q")
    assert len(cp.stdout.split()) == 160


def test_a_worker_moves_to_a_live_manager_when_its_manager_dies(three: ManagerCluster) -> None:
    mc = three
    lead = mc.leader()
    for n in mc.nodes:
        lead.docker("node", "update", "--availability", "drain", n.hostname)
    w = mc.new_node("w1")
    mc.join(w, "worker", via=lead)  # it knows only the leader's address, and learns the others from it
    lead.docker("service", "create", "--detach", "--name", "web", "--replicas", "2", "busybox", *SLEEP)
    wait_until(lambda: len(running(lead, "web")) == 2, 30, what="2 tasks on the worker")
    pids = w.command_pids()
    assert len(pids) == 2

    lead.kill9()
    survivors = [n for n in mc.nodes if n is not lead and n is not w]
    new = mc.leader(survivors)
    new.docker("service", "scale", "--detach", "web=4")
    wait_until(lambda: len(running(new, "web")) == 4, 60, what="the worker to take the new tasks from the new leader")
    assert mc.node_ls(new)["w1"]["Status"]["State"] == "ready"
    assert all(w.command_pids().get(t) == p for t, p in pids.items())  # its first tasks were never restarted
    known = json.loads((w.data_dir / "node.json").read_text())["manager_addrs"]
    assert {mc.addr(n) for n in survivors} <= set(known), (known, [mc.addr(n) for n in mc.nodes])


def test_force_new_cluster_on_the_last_manager_standing_keeps_the_state(three: ManagerCluster) -> None:
    mc = three
    m1, m2, m3 = mc.nodes
    m1.docker("service", "create", "--detach", "--name", "keep", "--replicas", "3", "busybox", *SLEEP)
    wait_until(lambda: len(running(m1, "keep")) == 3, 30, what="3 running tasks")
    for i in range(10):
        status, body = create_config(mc.nodes[i % 3], f"kept{i}")
        assert status == 201, body
    m2.kill9()
    m3.kill9()
    cp = m1.docker("node", "ls", check=False, timeout=90)
    assert "The swarm does not have a leader. It's possible that too few managers are online. Make sure more " \
           "than half of the managers are online." in cp.stderr, cp

    out = m1.docker("swarm", "init", "--force-new-cluster", "--advertise-addr", "127.0.0.1",
                    "--listen-addr", mc.addr(m1)).stdout
    assert "Swarm initialized: current node" in out and "is now a manager" in out
    st = mc.manager_status(m1)
    assert st["m1"] == "Leader" and st["m2"] == "" and st["m3"] == ""  # the others are no longer managers
    assert mc.raft(m1)["voters"] == [mc.raft(m1)["id"]]
    status, configs = m1.api("GET", "/v1.47/configs")
    assert {f"kept{i}" for i in range(10)} <= {c["Spec"]["Name"] for c in configs}
    assert len(tasks_of(m1, "keep")) >= 3
    status, _ = create_config(m1, "after")  # it commits alone
    assert status == 201
    m1.docker("node", "rm", "--force", "m2", "m3")

    # A wiped manager joins the new cluster.
    import shutil

    m2.stop()
    shutil.rmtree(m2.data_dir)
    m2.start()
    mc.join(m2, "manager", via=m1)
    wait_until(lambda: sorted(mc.manager_status(m1).values()) == ["Leader", "Reachable"], 30,
               what="two managers again")
    wait_until(lambda: mc.raft(m2)["objects"]["config"] == 11, 30, what="m2 to hold the state")


def test_five_managers_keep_working_with_two_down_and_stop_with_three(tmp_path: Path) -> None:
    _require_cli()
    with ManagerCluster(tmp_path, 5) as mc:
        lead = mc.leader()
        assert len(mc.raft(lead)["voters"]) == 5
        down = [n for n in mc.nodes if n is not lead][:2]
        for n in down:
            n.kill9()
        up = [n for n in mc.nodes if n not in down]
        status, body = create_config(up[-1], "with-two-down")
        assert status == 201, body
        third = next(n for n in up if n is not lead)
        third.kill9()
        rest = [n for n in up if n is not third]
        st, body = rest[0].api("GET", "/v1.47/configs")  # two of five: no quorum, no leader, no answers
        assert st >= 500, body
        wait_until(lambda: not any(mc.raft(n).get("is_leader") for n in rest), 10, what="no leader among two")
        cp = rest[-1].docker("config", "create", "no-quorum", "-", input="x", check=False, timeout=90)
        assert cp.returncode != 0
        third.start()  # three of five again: a leader, and the writes go on
        mc.leader([*rest, third], timeout=30)
        status, body = create_config(third, "quorum-back")
        assert status == 201, body


def test_raft_tick_sets_the_election_timeout_and_the_manager_still_leads(tmp_path: Path) -> None:
    _require_cli()
    with ManagerCluster(tmp_path, 1, extra_args=("--raft-tick", "0.25")) as mc:
        (m1,) = mc.nodes
        st = mc.raft(m1)
        assert st["election_timeout"] == 2.5 and st["is_leader"], st
        status, body = create_config(m1, "ticked")
        assert status == 201, body
