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

Shoal: not available yet (needs issue 5: multi-manager Raft, and issue 4: nodes joining over the
network); nothing is recorded for it.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

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
    record,
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


def run(quick: bool) -> list[dict[str, Any]]:
    note("failover", "Shoal: not available yet (needs issue 5/4: three managers, nodes joining over the network)")
    why = ensure_debian(["docker.io"], ["/usr/sbin/dockerd", "docker"])
    if why:
        note("failover", f"reference not run: {why}")
        return []
    from tests.e2e.dockerd import ensure_test_image

    runs = 2 if quick else 10
    nodes = [Node(0, "manager"), Node(1, "manager"), Node(2, "manager"), Node(3, "worker")]
    cond = (f"real Swarm: 3 managers + 1 worker, each dockerd in its own netns on a bridge, default settings; "
            f"{runs} runs each; poll {POLL}s")
    conditions("failover", cond)
    records: list[dict[str, Any]] = []
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
        lead: list[float] = []
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
        work: list[float] = []
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
        shutil.rmtree(DATA, ignore_errors=True)
        shutil.rmtree(BASE, ignore_errors=True)
    return records


if __name__ == "__main__":
    import argparse
    import json
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=1))
