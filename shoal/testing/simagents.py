"""Many simulated agents in one process, each a real node of a swarm over gRPC (the scale benchmark's load).

Every simulated agent is what a remote worker is, minus containers: its own EC key, a real join (the root
pinned against the token, a CSR, a node certificate from the cluster's CA), its own gRPC channel with mutual
TLS under its own certificate, its own dispatcher session (register, heartbeats at the period the managers
set, the assignments stream, status reports), driven by the real `Agent`. Only the executor is simulated:
`FakeExecutor` with tasks that run until shut down, so an assigned task goes to running and stays there.

Run as a process (what bench/scale.py starts, several of them, so the client side uses more than one core):

    python -m shoal.testing.simagents --manager 127.0.0.1:2377 --token SWMTKN-... --count 1000 --prefix sim0

It prints one JSON line per `--report-interval` seconds on stdout: agents joined so far, sessions up, the
seconds the joins took, running tasks (their running status acknowledged by the leader, i.e. written to the
store), heartbeats and registrations sent, errors. It runs until SIGTERM or SIGINT, or until stdin closes.
SIGUSR1 writes every agent's view (its tasks and their states as the agent sees them, the status reports not
yet acknowledged, whether its session is up) as one JSON line on stderr: what a stuck task looks like from
its node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from shoal import ca as CA
from shoal.agent.agent import Agent
from shoal.api.dispatch import SessionTerms
from shoal.api.usage import NodeUsage
from shoal.clock import SystemClock
from shoal.model.objects import NodeDescription, TaskStatus
from shoal.model.state import TaskState
from shoal.rpc.client import RemoteDispatcher, join
from shoal.testing.fakeexec import FakeBehavior, FakeExecutor

log = logging.getLogger(__name__)

RUN_UNTIL_STOPPED = FakeBehavior(exit_code=None)


@dataclass
class SimStats:
    started: float = field(default_factory=time.monotonic)
    joined: int = 0  # agents whose join returned a certificate
    connected: int = 0  # agents whose first session is up
    join_seconds: float = 0.0  # from the start until the last agent's first session was up
    registers: int = 0
    heartbeats: int = 0
    status_reports: int = 0  # UpdateTaskStatus calls acknowledged
    running: set[str] = field(default_factory=set)  # tasks whose running status the leader acknowledged
    errors: int = 0
    last_error: str = ""

    def line(self) -> dict[str, Any]:
        return {"joined": self.joined, "connected": self.connected, "join_s": round(self.join_seconds, 3),
                "running": len(self.running), "registers": self.registers, "heartbeats": self.heartbeats,
                "status_reports": self.status_reports, "errors": self.errors, "last_error": self.last_error,
                "t": round(time.monotonic() - self.started, 3)}


class CountingDispatcher(RemoteDispatcher):
    """The real remote dispatcher, counting what it sends and which running reports the leader acknowledged."""

    def __init__(self, manager_addrs: list[str], creds: Any, stats: SimStats) -> None:
        super().__init__(manager_addrs, creds)
        self.stats = stats

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        self.stats.registers += 1
        return await super().register(node_id, description, addr)

    async def heartbeat(self, node_id: str, usage: NodeUsage | None = None) -> SessionTerms:
        self.stats.heartbeats += 1
        return await super().heartbeat(node_id, usage)

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        await super().update_task_status(node_id, updates)  # returns once the leader has written them
        self.stats.status_reports += 1
        for tid, st in updates:
            if st.state == TaskState.RUNNING:
                self.stats.running.add(tid)


class SimAgents:
    """`count` simulated agents joining through `managers` with `token`, at most `concurrency` joins at once."""

    def __init__(self, managers: list[str], token: str, count: int, prefix: str, *, concurrency: int = 8,
                 seed: int = 0) -> None:
        self.managers = managers
        self.token = token
        self.count = count
        self.prefix = prefix
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.stats = SimStats()
        self.agents: list[Agent] = []
        self.dispatchers: list[CountingDispatcher] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.all_connected = asyncio.Event()

    def _error(self, e: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(e).__name__}: {e}"[:300]

    async def _one(self, i: int, sem: asyncio.Semaphore) -> None:
        hostname = f"{self.prefix}-{i}"
        async with sem:
            while True:
                try:
                    res = await join(self.managers, self.token, CA.new_key_pem(), hostname, "active")
                    break
                except Exception as e:  # a busy manager: try again (each failure is counted)
                    self._error(e)
                    await asyncio.sleep(0.5 + self.rng.random())  # back off before joining again
            self.stats.joined += 1
            disp = CountingDispatcher([res.manager_addr, *[m for m in self.managers if m != res.manager_addr]],
                                      res.creds, self.stats)
            agent = Agent(res.node_id, FakeExecutor(hostname=hostname, behavior=RUN_UNTIL_STOPPED), disp,
                          SystemClock(), random.Random(self.rng.getrandbits(64)), addr="127.0.0.1")
            self.agents.append(agent)
            self.dispatchers.append(disp)
            self._tasks.append(asyncio.create_task(agent.run(), name=f"agent-{hostname}"))
            await agent.connected.wait()
        self.stats.connected += 1
        if self.stats.connected == self.count:
            self.stats.join_seconds = time.monotonic() - self.stats.started
            self.all_connected.set()

    async def start(self) -> None:
        """Join and connect every agent (returns once all sessions are up)."""
        self.stats.started = time.monotonic()
        sem = asyncio.Semaphore(self.concurrency)
        await asyncio.gather(*(self._one(i, sem) for i in range(self.count)))

    def dump(self) -> dict[str, Any]:
        """Every agent's view of its tasks (for diagnosing a task the managers see stuck)."""
        return {a.node_id: {"connected": a.connected.is_set(),
                            "tasks": {tid: r.task.status.state.name.lower() for tid, r in a.runners.items()},
                            "unacknowledged": {tid: st.state.name.lower() for tid, st in a._reports.items()}}
                for a in self.agents}

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        for a in self.agents:
            await a.close()
        for d in self.dispatchers:
            await d.close()


async def _main(args: argparse.Namespace) -> None:
    sim = SimAgents(args.manager, args.token, args.count, args.prefix, concurrency=args.concurrency,
                    seed=args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps({"dump": sim.dump()}), file=sys.stderr,
                                                          flush=True))
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 4096) else None)

    def emit() -> None:
        sys.stdout.write(json.dumps(sim.stats.line()) + "\n")
        sys.stdout.flush()

    starting = asyncio.create_task(sim.start())
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.report_interval)
            if starting.done() and starting.exception() is not None:
                raise starting.exception()  # type: ignore[misc]
            emit()
    finally:
        starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        await sim.stop()
        emit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shoal.testing.simagents", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manager", action="append", required=True, help="a manager's listen address (repeatable)")
    ap.add_argument("--token", required=True, help="the swarm's worker join token")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--prefix", default="sim", help="hostnames are PREFIX-0 .. PREFIX-(count-1)")
    ap.add_argument("--concurrency", type=int, default=8, help="joins in flight at once")
    ap.add_argument("--report-interval", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
