"""Many nodes: real `shoal daemon` processes on loopback, workers joined with `docker swarm join`.

One manager (drained, so every task lands on a worker) and workers with the process executor. The manager
listens on a port of its own per test (`--listen-addr 127.0.0.1:<free port>`), the heartbeat period is 1 s
(`docker swarm update --dispatcher-heartbeat 1s`) so a dead worker is noticed within ~3 s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.managers import WORKER_JOINED
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import SLEEP, Cluster


def secret_files(node: ShoalNode, name: str) -> list[Path]:
    return [p for d in node.task_dirs() for p in (d / "secrets").glob(name)] if node.tasks_dir.is_dir() else []


def agent_secrets(node: ShoalNode) -> list[str]:
    """Secret IDs the node's agent holds in memory (Shoal's diagnostic endpoint)."""
    status, body = node.api("GET", "/_shoal/agent")
    assert status == 200, body
    return list(body["secrets"])


def test_join_spread_kill_restart_and_secrets(cluster: Cluster) -> None:
    m = cluster.manager
    for name in ("w1", "w2", "w3"):
        cluster.add_worker(name)

    # --- node ls / inspect as the stock CLI shows them
    rows = [json.loads(line) for line in m.docker("node", "ls", "--format", "{{json .}}").stdout.splitlines()]
    by_host = {r["Hostname"]: r for r in rows}
    assert set(by_host) == {"mgr", "w1", "w2", "w3"}
    assert by_host["mgr"]["ManagerStatus"] == "Leader" and by_host["mgr"]["Availability"] == "Drain"
    for w in ("w1", "w2", "w3"):
        assert (by_host[w]["Status"], by_host[w]["Availability"], by_host[w]["ManagerStatus"]) == \
            ("Ready", "Active", "")
        assert by_host[w]["EngineVersion"]
    info = json.loads(m.docker("node", "inspect", "w1").stdout)[0]
    assert info["Spec"]["Role"] == "worker" and info["Status"]["Addr"] == "127.0.0.1"
    assert info["Description"]["Resources"]["NanoCPUs"] > 0 and info["Description"]["Resources"]["MemoryBytes"] > 0
    assert info["Description"]["TLSInfo"]["TrustRoot"].startswith("-----BEGIN CERTIFICATE-----")
    pretty = m.docker("node", "inspect", "--pretty", "w1").stdout
    lines = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in pretty.splitlines())}
    assert lines["Hostname"] == "w1" and lines["Address"] == "127.0.0.1" and lines["State"] == "Ready"

    # --- a worker's own API refuses cluster management as dockerd does
    w1 = cluster.workers["w1"]
    for args in (("node", "ls"), ("service", "ls"), ("swarm", "join-token", "worker")):
        cp = w1.docker(*args, check=False)
        assert cp.returncode != 0
        assert "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state." \
            in cp.stderr, cp.stderr
    winfo = json.loads(w1.docker("info", "--format", "{{json .Swarm}}").stdout)
    assert winfo["LocalNodeState"] == "active" and winfo["ControlAvailable"] is False
    assert winfo["NodeID"] == cluster.node_id("w1")
    assert (w1.data_dir / "certificates" / "swarm-node.crt").exists()
    assert oct((w1.data_dir / "certificates" / "swarm-node.key").stat().st_mode & 0o777) == "0o600"

    # --- secrets reach only the node whose task uses them
    m.docker("secret", "create", "pw", "-", input="s3cret\n")
    m.docker("service", "create", "--detach", "--name", "sec", "--secret", "pw", "--constraint",
             "node.hostname==w1", "busybox", *SLEEP)
    wait_until(lambda: len(cluster.running("sec")) == 1, 30, what="sec running")
    wait_until(lambda: secret_files(w1, "pw"), 10, what="the secret on w1")
    assert [p.read_text() for p in secret_files(w1, "pw")] == ["s3cret\n"]
    pw_id = json.loads(m.docker("secret", "inspect", "pw").stdout)[0]["ID"]
    assert agent_secrets(w1) == [pw_id]  # in the agent's memory too
    for other in ("w2", "w3"):
        assert not secret_files(cluster.workers[other], "pw")
        assert agent_secrets(cluster.workers[other]) == []

    # --- a replicated service spread across the workers
    m.docker("service", "create", "--detach", "--name", "web", "--replicas", "6", "busybox", *SLEEP)
    wait_until(lambda: cluster.placement("web") == {"w1": 2, "w2": 2, "w3": 2}, 40,
               what="web spread 2/2/2")
    w2 = cluster.workers["w2"]
    w2_web = {t["ID"] for t in cluster.running("web") if t["NodeID"] == cluster.node_id("w2")}
    wait_until(lambda: w2_web <= set(w2.command_pids()), 10, what="w2's processes")

    # --- kill -9 of a worker: its tasks are replaced elsewhere
    t0 = time.monotonic()
    w2.kill9()
    wait_until(lambda: cluster.node_state("w2") == "down", 20, what="w2 marked down")
    t_down = time.monotonic() - t0
    wait_until(lambda: sum(cluster.placement("web").get(h, 0) for h in ("w1", "w3")) == 6, 40,
               what="6 web replicas on w1 and w3")
    elapsed = time.monotonic() - t0
    print(f"\nworker kill -9 -> node down in {t_down:.2f}s; all 6 replicas running again in {elapsed:.2f}s "
          f"(heartbeat 1s)")
    assert cluster.placement("web") == {"w1": 3, "w3": 3}
    assert set(w2.command_pids()) >= w2_web  # the dead daemon's task processes still run (a partition)

    # --- the worker comes back: its stale tasks are shut down, nothing is duplicated
    w2.start()
    wait_until(lambda: cluster.node_state("w2") == "ready", 20, what="w2 ready again")
    wait_until(lambda: not (w2_web & set(w2.command_pids())), 30, what="w2's stale tasks to stop")
    assert sum(cluster.placement("web").values()) == 6

    # --- secrets leave the node once no task there uses them
    sec_task_dirs = [p.parent.parent for p in secret_files(w1, "pw")]
    m.docker("service", "rm", "sec")
    wait_until(lambda: not secret_files(w1, "pw"), 30, what="the secret to leave w1")
    assert not any(d.exists() for d in sec_task_dirs)
    wait_until(lambda: agent_secrets(w1) == [], 10, what="the secret to leave w1's memory")


def _version(cluster: Cluster, hostname: str) -> int:
    n = cluster.node(hostname)
    assert n is not None
    return int(n["Version"]["Index"])


def test_drain_pause_global_rotation_removal_and_leave(cluster: Cluster) -> None:
    m = cluster.manager
    cluster.add_worker("w1")
    cluster.add_worker("w2")
    m.docker("service", "create", "--detach", "--name", "g", "--mode", "global", "busybox", *SLEEP)
    m.docker("service", "create", "--detach", "--name", "r", "--replicas", "4", "busybox", *SLEEP)
    wait_until(lambda: cluster.placement("g") == {"w1": 1, "w2": 1}, 30, what="g on w1 and w2")
    wait_until(lambda: cluster.placement("r") == {"w1": 2, "w2": 2}, 30, what="r spread")

    # --- the manager restarts: workers keep their tasks running and reconnect (new secure port)
    before = {h: w.command_pids() for h, w in cluster.workers.items()}
    assert all(len(p) == 3 for p in before.values())
    versions = {h: _version(cluster, h) for h in ("w1", "w2")}
    m.restart()
    wait_until(lambda: cluster.placement("r") == {"w1": 2, "w2": 2} and cluster.placement("g") == {"w1": 1, "w2": 1},
               30, what="tasks reported running after the manager restart")
    # Each worker registers again with the restarted manager, a write of its node: until then a read-modify-write
    # of the node (the CLI's `node update`) may meet it and be refused as out of sequence, as dockerd's would.
    wait_until(lambda: all(_version(cluster, h) > v for h, v in versions.items()), 30,
               what="both workers registered again")
    assert {h: w.command_pids() for h, w in cluster.workers.items()} == before
    assert cluster.node_state("w1") == cluster.node_state("w2") == "ready"

    # --- pause: no new tasks on w2, its running ones stay
    m.docker("node", "update", "--availability", "pause", "w2")
    m.docker("service", "scale", "--detach", "r=6")
    wait_until(lambda: cluster.placement("r") == {"w1": 4, "w2": 2}, 30, what="new r tasks only on w1")

    # --- drain: everything leaves w1 (global included)
    m.docker("node", "update", "--availability", "active", "w2")
    m.docker("node", "update", "--availability", "drain", "w1")
    wait_until(lambda: cluster.placement("r") == {"w2": 6}, 30, what="r drained off w1")
    wait_until(lambda: cluster.placement("g") == {"w2": 1}, 30, what="g drained off w1")
    w1 = cluster.workers["w1"]
    wait_until(lambda: not w1.command_pids(), 30, what="w1's processes to stop")
    m.docker("node", "update", "--availability", "active", "w1")

    # --- token rotation: the old token is refused, nothing half-joined is left
    old = cluster.token()
    m.docker("swarm", "join-token", "--rotate", "worker")
    new = cluster.token()
    assert new != old and new.rsplit("-", 1)[0] == old.rsplit("-", 1)[0]
    w3 = cluster.add_worker("w3", join=False)
    cp = w3.docker("swarm", "join", "--token", old, cluster.addr, check=False)
    assert cp.returncode != 0
    assert ("Error response from daemon: rpc error: code = InvalidArgument desc = A valid join token is necessary "
            "to join this cluster") in cp.stderr
    assert json.loads(w3.docker("info", "--format", "{{json .Swarm}}").stdout)["LocalNodeState"] == "inactive"
    assert not (w3.data_dir / "node.json").exists() and not (w3.data_dir / "certificates").exists()
    assert cluster.node("w3") is None
    # a token of another cluster (other CA digest) is refused before it is sent
    cp = w3.docker("swarm", "join", "--token", "SWMTKN-1-" + "1" * 50 + "-" + new.rsplit("-", 1)[1], cluster.addr,
                   check=False)
    assert "remote CA does not match fingerprint" in cp.stderr

    # --- a node joining later gets the global service's task
    assert WORKER_JOINED in w3.docker("swarm", "join", "--token", new, cluster.addr).stdout
    wait_until(lambda: cluster.placement("g") == {"w1": 1, "w2": 1, "w3": 1}, 30, what="g grown onto w3")

    # --- node rm: refused while up, --force removes it and its certificate is refused from then on
    cp = m.docker("node", "rm", "w3", check=False)
    assert cp.returncode != 0 and "is not down and can't be removed" in cp.stderr
    w3_id = cluster.node_id("w3")
    m.docker("node", "rm", "--force", "w3")
    assert cluster.node("w3") is None
    # ... and the removed node leaves on its own: its tasks stop, its swarm state goes, it is inactive
    wait_until(lambda: f"node {w3_id} was removed from the swarm" in w3.log_tail(200), 30,
               what="w3's calls to be refused")
    wait_until(lambda: json.loads(w3.docker("info", "--format", "{{json .Swarm}}").stdout)["LocalNodeState"]
               == "inactive", 30, what="w3 inactive after its removal")
    assert not (w3.data_dir / "node.json").exists() and not (w3.data_dir / "certificates").exists()
    wait_until(lambda: not w3.command_pids(), 20, what="w3's processes to stop")
    assert cluster.node("w3") is None

    # --- leave on a worker: its tasks stop, its state goes, the manager marks it down
    w1_pids = w1.command_pids()
    wait_until(lambda: w1.command_pids(), 20, what="w1 running g again")
    w1_pids = w1.command_pids()
    assert w1.docker("swarm", "leave").returncode == 0
    assert json.loads(w1.docker("info", "--format", "{{json .Swarm}}").stdout)["LocalNodeState"] == "inactive"
    assert not (w1.data_dir / "certificates").exists() and not (w1.data_dir / "node.json").exists()
    assert not (set(w1_pids) & set(w1.command_pids()))
    wait_until(lambda: cluster.node_state("w1") == "down", 20, what="w1 down after leaving")
