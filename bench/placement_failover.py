"""Reproduction (not part of bench/run): kill -9 of the leader while a placement is in flight.

Three managers and N simulated agents (bench/scale.py's harness); services of 1,000 replicas are created, the
leader is killed KILL_AFTER seconds later, and the new leader's task list is printed every 3 s until every task
runs; if some never do, each stuck task is printed with its node's own view of it (the agents' SIGUSR1 dump).

It found this bug (fixed; tests/unit/test_rpc_security.py keeps it fixed): with 300 agents, 5,000 tasks and a kill
3 s in, 6-352 tasks stayed `assigned` for good, while their agents ran them and had no report left to send. A
reconnecting agent closes its old channel, grpc.aio cancels the calls still in flight on it, and the running
report cut that way ended the agent's reporter with a CancelledError that its TaskGroup dropped silently. After
the fix, three of three runs had every task running 7 s in.

    python bench/placement_failover.py [AGENTS] [TASKS] [KILL_AFTER]      # default 300 5000 3
"""

from __future__ import annotations

import collections
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scale


def main(agents: int, tasks: int, kill_after: float, polls: int = 10) -> int:
    from tests.support.managers import ManagerCluster

    base = Path("/var/tmp/shoalb-placement-failover")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    scale.BASE = base  # the agents' logs go there
    mc = ManagerCluster(base / "mgrs", 3, heartbeat="", extra_args=("--log-level", "info"))
    sims: scale.SimProcs | None = None
    try:
        mc.start()
        leader = mc.leader()
        for n in mc.nodes:
            leader.docker("node", "update", "--availability", "drain", n.hostname)
        addrs = [mc.addr(leader), *[mc.addr(n) for n in mc.nodes if n is not leader]]
        sims = scale.SimProcs(addrs, mc.token("worker"), agents)
        sims.wait("connected", agents, 120.0, "agents connected")
        t0 = time.monotonic()
        for k in range(tasks // 1000):
            st, body = leader.api("POST", "/v1.47/services/create",
                                  json.dumps(scale._service(f"pf{k}", 1000)).encode())
            assert st == 201, (st, body)
        while time.monotonic() - t0 < kill_after:
            time.sleep(0.05)  # the kill comes at a chosen point of the placement
        leader.kill9()
        new = mc.leader()
        print(f"killed {leader.hostname} {kill_after:.1f}s in; {new.hostname} leads "
              f"{time.monotonic() - t0:.1f}s in", flush=True)
        body: Any = []
        for _ in range(polls):
            time.sleep(3.0)  # poll period of the report
            st, body = new.api("GET", "/v1.47/tasks")
            states = collections.Counter((t["Status"]["State"], t["DesiredState"]) for t in body)
            print(f"{time.monotonic() - t0:5.0f}s {dict(states)}", flush=True)
            if states.get(("running", "running"), 0) == tasks:
                print("every task runs")
                return 0
        _, nodes = new.api("GET", "/v1.47/nodes")
        names = {n["ID"]: f'{n["Description"]["Hostname"]} ({n["Status"]["State"]})' for n in nodes}
        stuck = [t for t in body if t["Status"]["State"] != "running"]
        by_node = collections.Counter(names.get(t["NodeID"]) for t in stuck)
        print(f"{len(stuck)} tasks never ran, by node: {dict(by_node)}")
        _agents_view(sims, base, {t["ID"]: t for t in stuck})
        return 1
    finally:
        if sims is not None:
            sims.stop()
        mc.stop()


def _agents_view(sims: scale.SimProcs, base: Path, stuck: dict[str, Any]) -> None:
    """Ask the agents' processes for their views (SIGUSR1) and print what the stuck tasks' nodes think of them."""
    logs = sorted(base.glob("sim*.log"))
    sizes = {p: p.stat().st_size for p in logs}
    for p in sims.procs:
        p.send_signal(signal.SIGUSR1)
    views: dict[str, Any] = {}
    deadline = time.monotonic() + 10.0
    while len(views) < len(logs) and time.monotonic() < deadline:
        for p in logs:
            with open(p) as f:
                f.seek(sizes[p])
                for line in f:
                    if line.startswith('{"dump"'):
                        views[str(p)] = json.loads(line)["dump"]
        time.sleep(0.2)  # poll for the dump lines the signal asked for
    agents = {nid: v for d in views.values() for nid, v in d.items()}
    for tid, t in stuck.items():
        a = agents.get(t["NodeID"], {})
        print(f"task {tid[:12]} on {t['NodeID'][:12]}: manager says {t['Status']['State']} "
              f"(version {t['Version']['Index']}, {t['Status'].get('Timestamp')}); agent connected="
              f"{a.get('connected')} sees {a.get('tasks', {}).get(tid, 'nothing')}, unacknowledged "
              f"{a.get('unacknowledged', {}).get(tid)}; the agent runs {len(a.get('tasks', {}))} tasks")


if __name__ == "__main__":
    from bench import procs

    args = [float(a) for a in sys.argv[1:4]]
    with procs.guarded():  # SIGTERM, SIGHUP, Ctrl-C: the clean-up runs and nothing started is left
        rc = main(int(args[0]) if args else 300, int(args[1]) if len(args) > 1 else 5000,
                  args[2] if len(args) > 2 else 3.0)
    sys.exit(rc)
