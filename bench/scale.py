"""Scale: 1,000 and 5,000 simulated agents against three managers; the leader's CPU share and RSS while idle and
while placing 100,000 tasks onto them.

Managers: three real `shoal daemon` processes on loopback (tests/support/managers.py: the stock CLI's
`swarm init` / `swarm join` with the manager token, Raft over gRPC with mutual TLS, fsync on), default
dispatcher heartbeat period (5 s, Swarm's default), all three drained so every task lands on a simulated agent.

Agents: shoal/testing/simagents.py, several per process (one process per `PER_PROCESS` agents). Each is a
real node: its own key, a real join over gRPC (root pinned against the token, CSR, node certificate), its own
gRPC channel with mutual TLS under its own certificate, its own dispatcher session (register, heartbeats at
the period the managers set, the assignments stream, status reports) driven by the real `Agent`; only the
executor is simulated (tasks run until shut down). Joins run `JOIN_CONCURRENCY` at a time per process. The
agents' processes run at nice `AGENT_NICE`: they stand in for other machines and must not starve the managers.

Measured on the leader's process (/proc/<pid>/stat and status): CPU share (CPU seconds per wall second, in
cores) and RSS (largest sample, every 0.5 s) over three windows:
- idle: every agent connected, a settle time after the last join, then `idle` seconds of nothing but
  heartbeats;
- placing: services of 1,000 replicas created through the leader's Engine API one after another, until every
  task's running status has been acknowledged by the leader (written to the store); tasks/s and the time;
- idle after: the same idle window with every task running.
Followers' and the simulated agents' processes are measured over the same windows (the agents share the
machine's 2 cores with the managers: their CPU is printed so the reader sees the load). Also: the join time of
all agents, heartbeats per second the agents sent, and whether the leader changed (Raft elections) on the way.

The goals are absolute (no side-by-side reference): under 1 GiB RSS and under half a core idle at 5,000 nodes.
Quick mode: 1,000 agents, 10,000 tasks, 10 s idle windows. Full: 1,000 and 5,000 agents, 100,000 tasks, 30 s.

Run: python bench/scale.py [--quick] [--agents N] [--tasks N]. `run(quick)` returns records for bench/run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import conditions, note, record
from shoal.manager.raft import DEFAULT_TICK

BASE = Path("/var/tmp/shoalb-scale")
PER_PROCESS = 1250
JOIN_CONCURRENCY = 16
REPLICAS_PER_SERVICE = 1000
SETTLE = 12.0  # seconds after the last join before the idle window (the join burst's writes, first heartbeats)
GOAL_RSS = 1 << 30
GOAL_IDLE_CORES = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")
B = "scale"
# The agents stand in for other machines: niced, so that their gRPC threads (about 100 per process under load,
# each runnable one a fair share of the 2 cores for the kernel) do not starve the managers. Not niced, the leader's
# loop stalled up to 5.7 s at 5,000 agents, longer than any election timeout, with a gen-0 collection of nothing
# "pausing" 0.8 s: time the process was not on a core.
AGENT_NICE = 10
RAFT_TICK: float | None = None  # --raft-tick S: the managers' `--raft-tick` (default: theirs, DEFAULT_TICK)
PROFILE_DIR: Path | None = None  # --py-spy DIR: py-spy samples the leader over each window (collapsed stacks)


def cpu_seconds(pid: int) -> float:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Window:
    """CPU seconds per wall second and the largest RSS of a set of processes over a stretch of time."""

    pids: dict[str, list[int]]
    t0: float = 0.0
    t1: float = 0.0
    cpu0: dict[str, float] = field(default_factory=dict)
    cpu1: dict[str, float] = field(default_factory=dict)
    rss_max: dict[str, int] = field(default_factory=dict)

    def _cpu(self) -> dict[str, float]:
        return {k: sum(cpu_seconds(p) for p in ps) for k, ps in self.pids.items()}

    def sample(self) -> None:
        for k, ps in self.pids.items():
            self.rss_max[k] = max(self.rss_max.get(k, 0), sum(rss_bytes(p) for p in ps))

    def start(self) -> Window:
        self.t0, self.cpu0 = time.monotonic(), self._cpu()
        self.sample()
        return self

    def stop(self) -> Window:
        self.sample()
        self.t1, self.cpu1 = time.monotonic(), self._cpu()
        return self

    def cores(self, k: str) -> float:
        return (self.cpu1[k] - self.cpu0[k]) / max(self.t1 - self.t0, 1e-9)

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


class SimProcs:
    """The simulated agents' processes; a reader thread per process keeps its latest report line."""

    def __init__(self, managers: list[str], token: str, agents: int) -> None:
        n = max(1, math.ceil(agents / PER_PROCESS))
        sizes = [agents // n + (1 if i < agents % n else 0) for i in range(n)]
        self.procs: list[subprocess.Popen[str]] = []
        self.latest: list[dict[str, Any]] = [{} for _ in sizes]
        self.cond = threading.Condition()
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        for i, size in enumerate(sizes):
            args = ["nice", "-n", str(AGENT_NICE), sys.executable, "-m", "shoal.testing.simagents",
                    "--token", token, "--count", str(size),
                    "--prefix", f"sim{i}", "--concurrency", str(JOIN_CONCURRENCY), "--seed", str(i),
                    "--report-interval", "0.5"]
            for m in managers:
                args += ["--manager", m]
            with open(BASE / f"sim{i}.log", "w") as log:
                p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     stderr=log)
            self.procs.append(p)
            threading.Thread(target=self._read, args=(i, p), daemon=True).start()

    def _read(self, i: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            with self.cond:
                self.latest[i] = json.loads(line)
                self.cond.notify_all()
        with self.cond:
            self.latest[i] = {**self.latest[i], "exited": p.poll() if p.poll() is not None else -1}
            self.cond.notify_all()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def total(self, key: str) -> int:
        with self.cond:
            return sum(int(x.get(key, 0)) for x in self.latest)

    def wait(self, key: str, target: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(int(x.get(key, 0)) for x in self.latest) < target:
                dead = [x for x in self.latest if "exited" in x]
                if dead:
                    raise RuntimeError(f"a simulated-agents process exited while waiting for {what}: {dead[0]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    got = sum(int(x.get(key, 0)) for x in self.latest)
                    raise TimeoutError(f"{what}: {got} of {target} after {timeout:.0f}s")
                self.cond.wait(left)

    def errors(self) -> tuple[int, str]:
        with self.cond:
            return (sum(int(x.get("errors", 0)) for x in self.latest),
                    next((x["last_error"] for x in self.latest if x.get("last_error")), ""))

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()  # the agents' processes stop when their stdin closes
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Profiler:
    """py-spy recording one process (non-blocking sampling, 50 Hz) until stopped; nothing without --py-spy."""

    def __init__(self, pid: int, name: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if PROFILE_DIR is None or shutil.which("py-spy") is None:
            return
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["py-spy", "record", "--nonblocking", "-r", "50", "-f", "raw", "-p", str(pid),
                                      "-o", str(PROFILE_DIR / f"{name}.txt")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _service(name: str, replicas: int) -> dict[str, Any]:
    return {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "shoal-test/busybox:latest",
                                                              "Command": ["sleep", "100000"]}},
            "Mode": {"Replicated": {"Replicas": replicas}}}


def _fmt(w: Window, k: str) -> str:
    return f"{w.cores(k):.3f} cores, RSS {w.rss_max[k] / 2**20:,.0f} MiB"


def _case(agents: int, tasks: int, idle: float) -> list[dict[str, Any]]:
    from tests.support.managers import ManagerCluster

    shutil.rmtree(BASE, ignore_errors=True)
    BASE.mkdir(parents=True)
    tick = () if RAFT_TICK is None else ("--raft-tick", str(RAFT_TICK))
    mc = ManagerCluster(BASE / "mgrs", 3, heartbeat="", extra_args=("--log-level", "warning", *tick))
    sims: SimProcs | None = None
    case = f"{agents:,} agents" + ("" if RAFT_TICK is None else f", raft tick {RAFT_TICK:g} s")
    recs: list[dict[str, Any]] = []
    t = RAFT_TICK or DEFAULT_TICK
    cond = (f"{agents:,} simulated agents (each its own gRPC session with mutual TLS, "
            f"{math.ceil(agents / PER_PROCESS)} process(es)), 3 managers (drained), {tasks:,} tasks in services "
            f"of {REPLICAS_PER_SERVICE:,}, heartbeat 5 s, fsync on, loopback, 2 cores shared by all, "
            f"Raft tick {t:g} s (election timeout {10 * t:g}-{15 * t:g} s)")

    def rec(metric: str, value: float, unit: str) -> None:
        recs.append(record(B, case, metric, value, unit, conditions=cond))

    try:
        mc.start()
        leader = first_leader = mc.leader()
        for n in mc.nodes:
            leader.docker("node", "update", "--availability", "drain", n.hostname)
        term0 = mc.raft(leader).get("term")
        token = mc.token("worker")
        addrs = [mc.addr(leader), *[mc.addr(n) for n in mc.nodes if n is not leader]]
        followers = [n for n in mc.nodes if n is not leader]
        t0 = time.monotonic()
        sims = SimProcs(addrs, token, agents)
        pids = {"leader": [leader.proc.pid],  # type: ignore[union-attr]
                "followers": [f.proc.pid for f in followers],  # type: ignore[union-attr]
                "agents": sims.pids}
        join_w = Window(pids).start()
        sims.wait("connected", agents, max(120.0, agents * 0.2), "agents connected")
        join_w.stop()
        join_s = time.monotonic() - t0
        errs, last = sims.errors()
        print(f"[scale] {case}: all joined and connected in {join_s:.1f}s ({agents / join_s:,.0f} joins/s; "
              f"leader {_fmt(join_w, 'leader')}; agents {join_w.cores('agents'):.2f} cores; "
              f"{errs} join/session errors{': ' + last if last else ''})", flush=True)
        rec("join time (all agents connected)", join_s, "s")
        rec("joins per second", agents / join_s, "joins/s")

        def idle_window(label: str) -> Window:
            hb0 = sims.total("heartbeats")
            prof = Profiler(pids["leader"][0], f"{agents}-{label.replace(' ', '').replace(',', '-')}")
            w = Window(pids).start()
            end = time.monotonic() + idle
            while time.monotonic() < end:
                time.sleep(0.5)  # RSS sampling period of the window
                w.sample()
            w.stop()
            prof.stop()
            hb = (sims.total("heartbeats") - hb0) / w.seconds
            print(f"[scale] {case} {label} ({w.seconds:.0f}s): leader {_fmt(w, 'leader')} "
                  f"(goal < {GOAL_IDLE_CORES} cores, < 1 GiB); followers {_fmt(w, 'followers')}; "
                  f"agents' processes {_fmt(w, 'agents')}; {hb:,.0f} heartbeats/s", flush=True)
            rec(f"leader CPU, {label}", w.cores("leader"), "cores")
            rec(f"leader RSS, {label}", w.rss_max["leader"] / 2**20, "MiB")
            rec(f"followers CPU (sum of 2), {label}", w.cores("followers"), "cores")
            rec(f"followers RSS (sum of 2), {label}", w.rss_max["followers"] / 2**20, "MiB")
            rec(f"agents' processes CPU, {label}", w.cores("agents"), "cores")
            rec(f"heartbeats per second, {label}", hb, "heartbeats/s")
            return w

        settle_end = time.monotonic() + SETTLE
        while time.monotonic() < settle_end:
            time.sleep(0.5)  # let the join burst's work finish before measuring idle
        idle_window("idle")
        term_idle = mc.raft(mc.leader()).get("term")
        print(f"[scale] {case}: Raft term {term0} -> {term_idle} over the join and the idle window "
              f"({'no election' if term_idle == term0 else 'ELECTIONS'})", flush=True)
        rec("Raft elections during join and idle (term change)", float((term_idle or 0) - (term0 or 0)), "terms")

        running0 = sims.total("running")
        prof = Profiler(pids["leader"][0], f"{agents}-placing")
        place = Window(pids).start()
        t_place = time.monotonic()
        left, k, retried = tasks, 0, False
        while left > 0:
            n = min(REPLICAS_PER_SERVICE, left)
            try:
                st, body = leader.api("POST", "/v1.47/services/create",
                                      json.dumps(_service(f"scale{k}", n)).encode())
            except TimeoutError:  # no answer in time: as a client would, ask again (a 409 then means it took)
                print(f"[scale] {case}: a create got no answer in time ({time.monotonic() - t_place:.1f}s in)",
                      flush=True)
                leader, retried = mc.leader(), True
                continue
            if st in (400, 500, 503) and ("leader" in str(body) or "unreachable" in str(body)):
                # An election: 503 "not the swarm leader" from a manager that lost it, 500 "does not have a
                # leader" (dockerd's answer too) while none is elected, 400 FailedPrecondition with the same text
                # when the forward to a leader found none, 503 "manager unreachable" when the forward to a new
                # leader timed out. Go on with whoever leads next, as a client would (the
                # term change is recorded and reported).
                print(f"[scale] {case}: leadership moved during placement ({time.monotonic() - t_place:.1f}s in)",
                      flush=True)
                leader = mc.leader()
                retried = True
                continue
            if st == 409 and retried and "already exists" in str(body):
                st = 201  # the create that lost its answer to the election had committed after all
            retried = False
            if st != 201:
                raise RuntimeError(f"service create answered {st}: {body}")
            left -= n
            k += 1
            place.sample()
        created_s = time.monotonic() - t_place
        deadline = time.monotonic() + max(300.0, tasks / 200)  # ~5x the placement time of a run without elections
        while sims.total("running") - running0 < tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sims.total('running') - running0} of {tasks} tasks running after "
                                   f"{time.monotonic() - t_place:.0f}s")
            with sims.cond:
                sims.cond.wait(0.5)
            place.sample()
        place.stop()
        prof.stop()
        place_s = time.monotonic() - t_place
        print(f"[scale] {case}: {tasks:,} tasks running in {place_s:.1f}s ({tasks / place_s:,.0f} tasks/s; "
              f"{k} services created in {created_s:.1f}s); leader {_fmt(place, 'leader')}; "
              f"followers {_fmt(place, 'followers')}; agents' processes {_fmt(place, 'agents')}", flush=True)
        rec("time until every task runs", place_s, "s")
        rec("tasks per second (create to running, acknowledged)", tasks / place_s, "tasks/s")
        rec("leader CPU, placing", place.cores("leader"), "cores")
        rec("leader RSS, placing (largest)", place.rss_max["leader"] / 2**20, "MiB")
        rec("followers CPU (sum of 2), placing", place.cores("followers"), "cores")
        rec("agents' processes CPU, placing", place.cores("agents"), "cores")

        settle_end = time.monotonic() + SETTLE
        while time.monotonic() < settle_end:
            time.sleep(0.5)  # the last reports and their replication, before the second idle window
        after = idle_window("idle, tasks running")
        term1 = mc.raft(mc.leader()).get("term")
        same = mc.leader() is first_leader
        print(f"[scale] {case}: Raft term {term0} -> {term1}, leader {'unchanged' if same else 'CHANGED'}",
              flush=True)
        rec("Raft elections during the run (term change)", float((term1 or 0) - (term0 or 0)), "terms")
        rss = after.rss_max["leader"]
        if agents >= 5000:
            ok_rss = max(rss, place.rss_max["leader"]) < GOAL_RSS
            note(B, f"{case}: goal RSS < 1 GiB {'met' if ok_rss else 'NOT met'} "
                    f"(largest {max(rss, place.rss_max['leader']) / 2**20:,.0f} MiB); goal idle < 0.5 core "
                    f"{'met' if after.cores('leader') < GOAL_IDLE_CORES else 'NOT met'} "
                    f"({after.cores('leader'):.3f} cores with the tasks running)")
        return recs
    finally:
        if sims is not None:
            sims.stop()
        mc.stop()
        _print_warnings(mc, case)
        shutil.rmtree(BASE, ignore_errors=True)


def _print_warnings(mc: Any, case: str) -> None:
    """The managers' warnings (leadership lost, slow garbage collections, ...): what explains an odd figure."""
    for n in mc.nodes:
        try:
            lines = [ln for ln in n.log_path.read_text(errors="replace").splitlines() if " WARNING " in ln
                     or " ERROR " in ln]
        except OSError:
            continue
        if lines:
            print(f"[scale] {case}: {n.hostname} logged {len(lines)} warning(s)/error(s); last ones:", flush=True)
            for ln in lines[-5:]:
                print(f"    {ln[:220]}", flush=True)


def run(quick: bool, agents: list[int] | None = None, tasks: int | None = None) -> list[dict[str, Any]]:
    if agents is None:
        agents = [1000] if quick else [1000, 5000]
    if tasks is None:
        tasks = 10_000 if quick else 100_000
    idle = 10.0 if quick else 30.0
    conditions(B, f"{', '.join(f'{a:,}' for a in agents)} simulated agents over gRPC (mutual TLS, a session each), "
                  f"3 managers on loopback (drained), {tasks:,} tasks, heartbeat 5 s, fsync on, idle windows "
                  f"{idle:.0f}s{' (quick: fewer agents and tasks)' if quick else ''}; goals: leader < 1 GiB RSS "
                  "and < 0.5 core idle at 5,000 nodes")
    note(B, "reference: none (real Swarm has no simulated agents; goals are absolute)")
    out: list[dict[str, Any]] = []
    for a in agents:
        out += _case(a, tasks, idle)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--agents", type=int, action="append", help="agents (repeatable; default 1000, and 5000 full)")
    ap.add_argument("--tasks", type=int)
    ap.add_argument("--raft-tick", type=float, help=f"the managers' --raft-tick in seconds (default {DEFAULT_TICK:g})")
    ap.add_argument("--py-spy", metavar="DIR", help="record the leader with py-spy over each window into DIR")
    a = ap.parse_args()
    RAFT_TICK = a.raft_tick
    if a.py_spy:
        PROFILE_DIR = Path(a.py_spy)
    from bench import procs

    with procs.guarded():  # SIGTERM, SIGHUP, Ctrl-C: the clean-up runs and nothing started is left
        print(json.dumps(run(a.quick, a.agents, a.tasks), indent=1))
