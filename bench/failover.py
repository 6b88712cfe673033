"""Failover: leader loss and worker loss, repeated, median and worst.

Reference: a real Swarm of three manager dockerds and one worker dockerd (Debian's docker.io), each in its
own network namespace, joined by a bridge on the host (10.214.0.0/24), engine flags as in e2e, default
Swarm settings (heartbeat 5 s, election tick 10 x 1 s).

- leader failover: `kill -9` of the leader's dockerd, then `docker secret create` against each surviving
  manager in turn until one is accepted; the time from the kill to that acceptance. The killed dockerd is
  then restarted on its data-root and the next run waits until it is a reachable manager again.
- worker loss: a service of 8 replicas spread over the 4 nodes; `kill -9` of the worker's dockerd, then
  the time until 8 tasks are running on the other nodes (polling the leader's task list every 0.2 s).
  The worker is restarted afterwards and the service removed.

Shoal, worker loss: one manager (drained, so every task lands on a worker) and two workers, each a real
`shoal daemon --executor process` on loopback with its own temp dir (tests/support/shoal_node.py), the
workers joined with `docker swarm join`. A service of 6 replicas spread 3/3 over the workers; `kill -9`
of one worker's daemon, then the time until 6 tasks run on the surviving worker (the manager's
`GET /tasks` polled every 0.1 s). A fresh cluster per run. Two cases: the default heartbeat period (5 s,
as Swarm's default) and `docker swarm update --dispatcher-heartbeat 1s`, labelled as such. The ratio is
taken against the Swarm reference's worker-loss figure of the same run (median against median, worst
against worst); the Swarm side has 4 nodes and 8 replicas, so the comparison is of recovery time, not of an
identical topology.

Shoal, leader failover: three managers (`shoal daemon --executor process` on loopback, joined with the stock
CLI and the manager token, default settings: Raft tick 100 ms, election timeout 1-2 s), `kill -9` of the leader,
then `docker secret create` against the surviving managers in turn (0.1 s between attempts, as the Swarm side)
until one is accepted; the killed manager is restarted and the next run waits for a healthy cluster (one
leader, every manager caught up). 30 runs (5 with --quick): median, p99 and worst, each against Swarm's
figure of the same run.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Netns,
    NsDockerd,
    conditions,
    del_bridge,
    docker_cli,
    ensure_debian,
    make_bridge,
    median,
    note,
    percentile,
    record,
    sh,
)

BASE = Path("/run/shoalb-fo")
DATA = Path("/var/tmp/shoalb-fo")
BRIDGE = "shoalb-br"
POLL = 0.2
CMD = ["sh", "-c", 'trap "exit 0" TERM; sleep 100000 & wait']


class Node:
    def __init__(self, i: int, role: str) -> None:
        self.i = i
        self.role = role
        self.ns = Netns(f"shoalb-n{i}", f"10.214.0.{10 + i}", bridge=BRIDGE, prefix=24)
        self.d = NsDockerd(BASE / f"n{i}", DATA / f"n{i}", self.ns)
        self.cli = BASE / f"cli{i}"

    def docker(self, *args: str, check: bool = True, timeout: float = 60.0) -> Any:
        return docker_cli(self.d.url, *args, config_dir=self.cli, check=check, timeout=timeout)

    def api(self) -> Any:
        import docker  # type: ignore[import-untyped]

        return docker.APIClient(base_url=self.d.url, timeout=10)

    def alive(self) -> bool:
        return self.d.proc is not None and self.d.proc.poll() is None


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(POLL)  # bounded polling


def _node_list(n: Node) -> list[dict[str, Any]]:
    try:
        return n.api().nodes()  # type: ignore[no-any-return]
    except Exception:
        return []


def _leader(nodes: list[Node]) -> Node | None:
    for n in nodes:
        if n.role != "manager" or not n.alive():
            continue
        for nd in _node_list(n):
            if (nd.get("ManagerStatus") or {}).get("Leader"):
                addr = nd["ManagerStatus"]["Addr"].split(":")[0]
                return next((m for m in nodes if m.ns.ns_ip == addr), None)
    return None


def _healthy(nodes: list[Node]) -> bool:
    """Every node ready, every manager reachable, a leader known."""
    for n in nodes:
        if n.role == "manager" and n.alive():
            ls = _node_list(n)
            if len(ls) != len(nodes):
                return False
            ok = all(nd["Status"]["State"] == "ready" and
                     (nd["Spec"]["Role"] != "manager" or nd["ManagerStatus"]["Reachability"] == "reachable")
                     for nd in ls)
            return ok and any((nd.get("ManagerStatus") or {}).get("Leader") for nd in ls)
    return False


def _leader_run(nodes: list[Node], k: int) -> float:
    leader = _leader(nodes)
    assert leader is not None
    survivors = [n for n in nodes if n.role == "manager" and n is not leader]
    t0 = time.monotonic()
    leader.d.kill9()
    j = 0
    while True:
        s = survivors[j % len(survivors)]
        j += 1
        p = s.docker("secret", "create", f"fo{k}x{j}", "/etc/hostname", check=False, timeout=30)
        if p.returncode == 0:
            elapsed = time.monotonic() - t0
            break
        if time.monotonic() - t0 > 120:
            raise TimeoutError("no write accepted within 120s of the leader's kill")
        time.sleep(0.1)  # bounded retry of the write
    leader.d.stop()  # end the orphaned containerd of the killed daemon, then restart on the same data
    leader.d.start()
    _wait(lambda: _healthy(nodes), 120, "cluster healthy again")
    return elapsed


def _worker_run(nodes: list[Node], k: int) -> float:
    worker = next(n for n in nodes if n.role == "worker")
    mgr = _leader(nodes)
    assert mgr is not None
    svc = f"fosvc{k}"
    mgr.docker("service", "create", "-d", "-q", "--name", svc, "--replicas", "8",
               "shoal-test/busybox:latest", *CMD)
    worker_id = worker.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()

    def tasks() -> list[dict[str, Any]]:
        m = _leader(nodes) or mgr
        try:
            return m.api().tasks(filters={"service": svc, "desired-state": "running"})  # type: ignore[no-any-return]
        except Exception:
            return []

    _wait(lambda: sum(1 for t in tasks() if t["Status"]["State"] == "running") == 8, 120, "8 running")
    if not any(t.get("NodeID") == worker_id for t in tasks()):
        raise RuntimeError("no replica landed on the worker")
    t0 = time.monotonic()
    worker.d.kill9()
    _wait(lambda: sum(1 for t in tasks() if t["Status"]["State"] == "running" and t.get("NodeID") != worker_id) == 8,
          180, "8 running elsewhere")
    elapsed = time.monotonic() - t0
    worker.d.stop()
    worker.d.start()
    mgr.docker("service", "rm", svc, check=False)
    _wait(lambda: _healthy(nodes), 120, "cluster healthy again")
    return elapsed


SHOAL_POLL = 0.1
SHOAL_REPLICAS = 6
SHOAL_CMD = ["sleep", "100000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shoal_worker_run(heartbeat: str | None) -> float:
    """One fresh cluster (manager drained + 2 workers), 6 replicas, kill -9 of a worker: seconds to recovery."""
    from tests.support.shoal_node import ShoalNode
    from tests.support.wait import wait_until

    base = Path(tempfile.mkdtemp(prefix="shoalb-fo-", dir="/var/tmp"))
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    mgr = ShoalNode(base / "mgr", hostname="mgr")
    workers = [ShoalNode(base / f"w{i}", hostname=f"w{i}") for i in (1, 2)]
    try:
        mgr.start()
        mgr.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", addr,
                   "--availability", "drain")
        if heartbeat:
            mgr.docker("swarm", "update", "--dispatcher-heartbeat", heartbeat)
        token = mgr.docker("swarm", "join-token", "-q", "worker").stdout.strip()

        def nodes() -> dict[str, dict[str, Any]]:
            st, body = mgr.api("GET", "/v1.47/nodes")
            return {n["Description"]["Hostname"]: n for n in body} if st == 200 else {}

        for w in workers:
            w.start()
            w.docker("swarm", "join", "--token", token, addr)
        wait_until(lambda: all((nodes().get(w.hostname) or {}).get("Status", {}).get("State") == "ready"
                               for w in workers), 30, what="workers ready")
        ids = {h: n["ID"] for h, n in nodes().items()}
        svc = "fosvc"
        q = quote(json.dumps({"service": [svc]}))

        def running() -> list[dict[str, Any]]:
            st, body = mgr.api("GET", f"/v1.47/tasks?filters={q}")
            if st != 200:
                return []
            return [t for t in body if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]

        mgr.docker("service", "create", "--detach", "--name", svc, "--replicas", str(SHOAL_REPLICAS),
                   "shoal-test/busybox:latest", *SHOAL_CMD)
        per = SHOAL_REPLICAS // 2
        wait_until(lambda: sorted(t["NodeID"] for t in running()) ==
                   sorted([ids["w1"]] * per + [ids["w2"]] * per), 60, what="6 replicas spread 3/3")
        victim = workers[1]
        vid = ids[victim.hostname]
        t0 = time.monotonic()
        victim.kill9()
        wait_until(lambda: sum(1 for t in running() if t["NodeID"] != vid) == SHOAL_REPLICAS, 120,
                   interval=SHOAL_POLL, what="6 replicas on the surviving worker")
        return time.monotonic() - t0
    finally:
        for n in [*workers, mgr]:
            try:
                n.stop()
            except Exception as e:  # keep cleaning the other nodes
                note("failover", f"cleanup of {n.hostname}: {e}")
        shutil.rmtree(base, ignore_errors=True)


def _shoal(runs: int, swarm_work: list[float]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    ref = "Swarm 20.10.24: kill -9 worker to its replicas running elsewhere (default settings)"
    for hb, label in ((None, "heartbeat 5s (default)"), ("1s", "heartbeat 1s (docker swarm update)")):
        cond = (f"Shoal: 1 manager (drained) + 2 workers, shoal daemon --executor process on loopback, "
                f"{SHOAL_REPLICAS} replicas spread 3/3, {label}; fresh cluster per run; {runs} runs; "
                f"manager's task list polled every {SHOAL_POLL}s")
        conditions("failover", cond)
        xs: list[float] = []
        for k in range(runs):
            try:
                xs.append(_shoal_worker_run(hb))
                print(f"  failover Shoal worker ({label}) run {k}: {xs[-1]:.2f}s", flush=True)
            except Exception as e:
                note("failover", f"Shoal worker run {k} ({label}) failed: {e}")
                break
        if not xs:
            continue
        for stat, v, rv in (("median", median(xs), median(swarm_work) if swarm_work else None),
                            ("worst", max(xs), max(swarm_work) if swarm_work else None)):
            records.append(record(
                "failover", f"Shoal, {label}: kill -9 worker to its replicas running elsewhere ({stat})",
                "seconds", v, "s", reference=f"{ref} ({stat})" if rv is not None else None,
                reference_value=rv, conditions=cond))
    return records


def _shoal_leader(runs: int, swarm_lead: list[float]) -> list[dict[str, Any]]:
    """Three managers, `runs` leader kills on one cluster; seconds from kill -9 to the first accepted write."""
    from tests.support.managers import ManagerCluster

    base = Path(tempfile.mkdtemp(prefix="shoalb-fl-", dir="/var/tmp"))
    cond = (f"Shoal: 3 managers (shoal daemon --executor process on loopback), default settings (Raft tick "
            f"100 ms, election timeout 10-14 ticks); {runs} runs on one cluster; `docker secret create` retried "
            "every 0.1 s")
    conditions("failover", cond)
    xs: list[float] = []
    mc = ManagerCluster(base, 3, heartbeat="", extra_args=("--log-level", "warning"))
    try:
        mc.start()
        for k in range(runs):
            try:
                mc.wait_healthy(60)
                lead = mc.leader()
                others = [n for n in mc.nodes if n is not lead]
                t0 = time.monotonic()
                lead.kill9()
                i = 0
                while True:  # the stock CLI per attempt, as the Swarm side
                    cp = others[i % 2].docker("secret", "create", f"fo{k}x{i}", "-", input="x", check=False,
                                              timeout=30)
                    i += 1
                    if cp.returncode == 0:
                        break
                    if time.monotonic() - t0 > 120:
                        raise TimeoutError("no write accepted within 120 s")
                    time.sleep(0.1)  # bounded retry of the write
                xs.append(time.monotonic() - t0)
                print(f"  failover Shoal leader run {k}: {xs[-1]:.2f}s", flush=True)
                lead.start()
            except (TimeoutError, AssertionError, RuntimeError) as e:
                note("failover", f"Shoal leader run {k} failed: {e}")
                break
    finally:
        mc.stop()
        shutil.rmtree(base, ignore_errors=True)
    records: list[dict[str, Any]] = []
    if xs:
        ref = "Swarm 20.10.24: kill -9 leader to first accepted write (default settings)"
        for stat, v, rv in (("median", median(xs), median(swarm_lead) if swarm_lead else None),
                            ("p99", percentile(xs, 99), percentile(swarm_lead, 99) if swarm_lead else None),
                            ("worst", max(xs), max(swarm_lead) if swarm_lead else None)):
            records.append(record("failover", f"Shoal: kill -9 leader to first accepted write ({stat})", "seconds",
                                  v, "s", reference=f"{ref} ({stat})" if rv is not None else None,
                                  reference_value=rv, conditions=cond))
    return records


def run(quick: bool) -> list[dict[str, Any]]:
    runs = 2 if quick else 10
    shoal_runs = 2 if quick else 5
    leader_runs = 5 if quick else 30  # the leader failover's tail is the goal (p99 over 30 runs)
    why = ensure_debian(["docker.io"], ["/usr/sbin/dockerd", "docker"])
    if why:
        note("failover", f"reference not run: {why}")
        return _shoal_leader(leader_runs, []) + _shoal(shoal_runs, [])
    from tests.e2e.dockerd import ensure_test_image

    nodes = [Node(0, "manager"), Node(1, "manager"), Node(2, "manager"), Node(3, "worker")]
    cond = (f"real Swarm: 3 managers + 1 worker, each dockerd in its own netns on a bridge, default settings; "
            f"{runs} runs each; poll {POLL}s")
    conditions("failover", cond)
    records: list[dict[str, Any]] = []
    work: list[float] = []
    lead: list[float] = []
    try:
        make_bridge(BRIDGE, "10.214.0.1/24")
        for n in nodes:
            n.d.cleanup()
            n.ns.create()
            n.d.start()
            ensure_test_image(n.d.url)
        first = nodes[0]
        first.docker("swarm", "init", "--advertise-addr", first.ns.ns_ip)
        mtok = first.docker("swarm", "join-token", "-q", "manager").stdout.strip()
        wtok = first.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for n in nodes[1:]:
            n.docker("swarm", "join", "--advertise-addr", n.ns.ns_ip, "--token",
                     mtok if n.role == "manager" else wtok, f"{first.ns.ns_ip}:2377")
        _wait(lambda: _healthy(nodes), 120, "swarm of 4 healthy")
        for k in range(runs):
            try:
                lead.append(_leader_run(nodes, k))
                print(f"  failover leader run {k}: {lead[-1]:.2f}s", flush=True)
            except (TimeoutError, RuntimeError, AssertionError) as e:
                note("failover", f"leader run {k} failed: {e}")
                break
        if lead:
            records.append(record("failover", "Swarm: kill -9 leader to first accepted write (median)",
                                  "seconds", median(lead), "s", conditions=cond))
            records.append(record("failover", "Swarm: kill -9 leader to first accepted write (worst)",
                                  "seconds", max(lead), "s", conditions=cond))
        for k in range(runs):
            try:
                work.append(_worker_run(nodes, k))
                print(f"  failover worker run {k}: {work[-1]:.2f}s", flush=True)
            except (TimeoutError, RuntimeError, AssertionError) as e:
                note("failover", f"worker run {k} failed: {e}")
                break
        if work:
            records.append(record("failover", "Swarm: kill -9 worker to its replicas running elsewhere (median)",
                                  "seconds", median(work), "s", conditions=cond))
            records.append(record("failover", "Swarm: kill -9 worker to its replicas running elsewhere (worst)",
                                  "seconds", max(work), "s", conditions=cond))
    finally:
        for n in nodes:
            n.d.cleanup()
            n.ns.destroy()
        del_bridge(BRIDGE)
        # dockerd bind-mounts its data-root onto itself; those mount points survive NsDockerd.cleanup's rmtree
        sh("sh", "-c", f"grep -F ' {DATA}/' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r umount -l",
           check=False)
        shutil.rmtree(DATA, ignore_errors=True)
        shutil.rmtree(BASE, ignore_errors=True)
    records += _shoal_leader(leader_runs, lead)
    records += _shoal(shoal_runs, work)
    return records


if __name__ == "__main__":
    import argparse
    import json

    from bench import procs

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    with procs.guarded():  # SIGTERM, SIGHUP, Ctrl-C: the clean-up runs and nothing started is left
        print(json.dumps(run(ap.parse_args().quick), indent=1))
