"""A whole cluster in one event loop under virtual time: the simulation layer of the test pyramid.

`SimCluster` wires one store, the manager's leader loops (orchestrator, allocator, scheduler, dispatcher)
and N agents running `FakeExecutor`s, all on one `VirtualClock` with auto-jump, so minutes of cluster life
take milliseconds and nothing sleeps for real:

    async with SimCluster.started(nodes=3) as sim:
        sim.behave(on_version(2, FakeBehavior(exit_code=1, run_for=2.0)))   # v2 tasks crash after 2 s
        svc = await sim.create_service(spec(replicas=3))
        await sim.wait_until(lambda: len(sim.running(svc.id)) == 3)
        await sim.update_service(svc.id, lambda s: with_image(s, "app:2"))
        await sim.wait_until(lambda: sim.update_state(svc.id) == "paused")

Task behaviour is scripted by rules (`behave`): functions of a task returning a `FakeBehavior` or None;
the most recently added rule that answers wins; the default runs until shut down. Every task and service
change is recorded with its virtual time (`sim.log`), so tests can assert on orderings ("the new task was
RUNNING before the old one was told to shut down") and on invariants over the whole run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from shoal.agent.agent import Agent
from shoal.clock import Clock
from shoal.errors import SequenceConflict
from shoal.ids import new_id
from shoal.manager.manager import Manager
from shoal.model.objects import (
    Annotations,
    Cluster,
    ContainerSpec,
    Node,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    Placement,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    SwarmSpec,
    Task,
    TaskSpec,
    UpdateConfig,
)
from shoal.model.state import TaskState
from shoal.store.memory import Event, MemoryStore, ReadTx, Subscription, WatchItem
from shoal.tasks import cancel_and_wait
from shoal.testing.clock import VirtualClock
from shoal.testing.durable import raft_store
from shoal.testing.fakeexec import FakeBehavior, FakeExecutor

Rule = Callable[[Task], FakeBehavior | None]

RUN_FOREVER = FakeBehavior(exit_code=None)


class MemoryProposer:
    """A Raft group of one with no disk: every entry commits at once (entries are kept for inspection)."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []

    async def propose(self, entry: bytes) -> int:
        self.entries.append(entry)
        return len(self.entries)


def memory_store(clock: Clock) -> MemoryStore:
    return MemoryStore(MemoryProposer(), clock)


# --- rules ----------------------------------------------------------------------------------------


def on_version(spec_version: int, behavior: FakeBehavior) -> Rule:
    """Tasks made from the service's spec version `spec_version` behave as `behavior`."""
    return lambda t: behavior if t.spec_version == spec_version else None


def on_image(image: str, behavior: FakeBehavior) -> Rule:
    return lambda t: behavior if t.spec.container.image == image else None


def on_service(name: str, behavior: FakeBehavior) -> Rule:
    return lambda t: behavior if t.service_annotations.name == name else None


def first_n(n: int, rule: Rule) -> Rule:
    """Apply `rule` to the first `n` tasks it matches, then stop answering."""
    left = [n]

    def r(t: Task) -> FakeBehavior | None:
        if left[0] <= 0:
            return None
        b = rule(t)
        if b is not None:
            left[0] -= 1
        return b

    return r


# --- spec helpers -----------------------------------------------------------------------------------


def service_spec(name: str = "web", *, replicas: int = 1, kind: str = "replicated", image: str = "app:1",
                 update: UpdateConfig | None = None, rollback: UpdateConfig | None = None,
                 restart: RestartPolicy | None = None, max_concurrent: int = 1,
                 total_completions: int = 1, constraints: tuple[str, ...] = ()) -> ServiceSpec:
    return ServiceSpec(
        annotations=Annotations(name=name),
        task_template=TaskSpec(container=ContainerSpec(image=image), restart_policy=restart,
                               placement=Placement(constraints=constraints) if constraints else None),
        mode=ServiceMode(kind=kind, replicas=replicas, max_concurrent=max_concurrent,
                         total_completions=total_completions),
        update_config=update, rollback_config=rollback)


def with_image(spec: ServiceSpec, image: str) -> ServiceSpec:
    tmpl = spec.task_template
    return replace(spec, task_template=replace(tmpl, container=replace(tmpl.container, image=image)))


def with_replicas(spec: ServiceSpec, n: int) -> ServiceSpec:
    return replace(spec, mode=replace(spec.mode, replicas=n))


def forced(spec: ServiceSpec) -> ServiceSpec:
    """`docker service update --force`: bump ForceUpdate."""
    return replace(spec, task_template=replace(spec.task_template,
                                               force_update=spec.task_template.force_update + 1))


# --- the log ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    at: float  # virtual seconds since the cluster started
    action: str  # create | update | remove
    kind: str  # task | service | node | commit (obj = the store version)
    obj: object
    old: object


class _Recorder(Subscription):
    """Appends every committed change to `sim.log` synchronously, as the store applies it, so the log
    is complete and its times exact whenever a test looks (a watching task would lag behind)."""

    def __init__(self, sim: SimCluster) -> None:
        super().__init__(sim.store, frozenset({"task", "service", "node"}), limit=1)
        self._sim = sim
        sim.store._subs.add(self)  # the store offers every commit to its subscriptions

    def _offer(self, items: list[WatchItem]) -> None:
        at = self._sim.clock.elapsed
        for it in items:
            if isinstance(it, Event):
                if it.kind in ("task", "service", "node"):
                    self._sim.log.append(Change(at, it.action, it.kind, it.obj, it.old))
            else:
                self._sim.log.append(Change(at, "commit", "commit", it.version, None))


@dataclass
class SimNode:
    id: str
    hostname: str
    executor: FakeExecutor
    agent: Agent
    task: asyncio.Task[None] | None = None


@dataclass
class SimCluster:
    clock: VirtualClock
    store: MemoryStore
    seed: int = 0
    history_limit: int = 5
    rules: list[Rule] = field(default_factory=list)
    nodes: dict[str, SimNode] = field(default_factory=dict)
    log: list[Change] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.manager = Manager(self.store, self.clock, random.Random(self.rng.getrandbits(64)))
        self.api = self.manager.controlapi
        self._leader: asyncio.Task[None] | None = None
        self._recorder: _Recorder | None = None
        self.leader_terms = 0

    # --- lifecycle --------------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls, nodes: int = 3, *, seed: int = 0, history_limit: int = 5,
                      durable: bool = False) -> AsyncIterator[SimCluster]:
        """A started cluster under auto-jumping virtual time; `durable` keeps the store in the Raft storage of a
        one-manager swarm (shoal.testing.durable) instead of memory."""
        clock = VirtualClock()
        with tempfile.TemporaryDirectory(prefix="shoal-sim-") as tmp:
            async with clock.autojump(), contextlib.AsyncExitStack() as stack:
                store = (await stack.enter_async_context(raft_store(Path(tmp), clock)) if durable
                         else memory_store(clock))
                sim = cls(clock=clock, store=store, seed=seed, history_limit=history_limit)
                await sim.start(nodes)
                try:
                    yield sim
                finally:
                    await sim.stop()

    async def start(self, nodes: int) -> None:
        cid = new_id(self.rng)
        await self.store.update(lambda tx: tx.create(Cluster(
            id=cid, spec=SwarmSpec(task_history_retention_limit=self.history_limit))))
        self._recorder = _Recorder(self)
        self.start_leader()
        for _ in range(nodes):
            await self.add_node()

    def start_leader(self) -> None:
        self.leader_terms += 1
        self._leader = asyncio.create_task(self.manager.run_leader(), name=f"leader-{self.leader_terms}")

    async def stop_leader(self) -> None:
        leader, self._leader = self._leader, None
        if leader is not None:
            await cancel_and_wait(leader)

    async def restart_leader(self) -> None:
        """A leader change on the same store: every leader loop is cancelled and started afresh."""
        await self.stop_leader()
        self.start_leader()

    async def stop(self) -> None:
        for n in self.nodes.values():
            await self._stop_agent(n)
        await self.stop_leader()
        if self._recorder is not None:
            self._recorder.close()

    async def _stop_agent(self, n: SimNode) -> None:
        if n.task is not None:
            await cancel_and_wait(n.task)
            n.task = None
        await n.agent.close()

    async def add_node(self, hostname: str | None = None, *, role: str = "worker",
                       labels: dict[str, str] | None = None, wait_ready: bool = True) -> str:
        nid = new_id(self.rng)
        host = hostname or f"node{len(self.nodes) + 1}"
        await self.store.update(lambda tx: tx.create(Node(
            id=nid, spec=NodeSpec(annotations=Annotations(labels=labels or {}), role=role),
            description=NodeDescription(hostname=host), status=NodeStatus(state="unknown"))))
        ex = FakeExecutor(hostname=host, behavior=self._behavior, clock=self.clock)
        agent = Agent(nid, ex, self.manager.dispatcher, self.clock, random.Random(self.rng.getrandbits(64)),
                      addr=f"10.99.0.{len(self.nodes) + 1}")
        n = SimNode(nid, host, ex, agent)
        n.task = asyncio.create_task(agent.run(), name=f"agent-{host}")
        self.nodes[nid] = n
        if wait_ready:
            await self.wait_until(lambda: self.node(nid).status.state == "ready", what=f"{host} ready")
        return nid

    async def set_availability(self, node_id: str, availability: str) -> None:
        node = self.node(node_id)
        await self.api.update_node(node_id, node.meta.version, replace(node.spec, availability=availability))

    # --- behaviour ----------------------------------------------------------------------------------

    def behave(self, rule: Rule) -> None:
        """Add a rule; later rules take precedence over earlier ones."""
        self.rules.append(rule)

    def _behavior(self, t: Task) -> FakeBehavior:
        for rule in reversed(self.rules):
            b = rule(t)
            if b is not None:
                return b
        return RUN_FOREVER

    # --- services -----------------------------------------------------------------------------------

    async def create_service(self, spec: ServiceSpec) -> Service:
        return await self.api.create_service(spec)

    async def update_service(self, sid: str, change: Callable[[ServiceSpec], ServiceSpec] | None = None,
                             *, rollback: bool = False) -> Service:
        """`docker service update` (or `--rollback`): read, change, write with the version check."""
        while True:
            cur = self.service(sid)
            try:
                return await self.api.update_service(
                    sid, cur.meta.version, None if rollback else (change or (lambda s: s))(cur.spec),
                    rollback=rollback)
            except SequenceConflict:
                continue  # the orchestrator wrote the service meanwhile (UpdateStatus); retry like the CLI

    # --- reading ------------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.elapsed

    def view(self) -> ReadTx:
        return self.store.view()

    def service(self, sid: str) -> Service:
        s = self.view().service(sid)
        assert s is not None, f"service {sid} not found"
        return s

    def node(self, nid: str) -> Node:
        n = self.view().node(nid)
        assert n is not None, f"node {nid} not found"
        return n

    def tasks(self, sid: str) -> list[Task]:
        return sorted(self.view().tasks(service_id=sid), key=lambda t: (t.slot, t.node_id, t.meta.created_at))

    def running(self, sid: str) -> list[Task]:
        """Tasks that run now and are meant to."""
        return [t for t in self.tasks(sid)
                if t.status.state == TaskState.RUNNING and t.desired_state == TaskState.RUNNING]

    def live(self, sid: str) -> list[Task]:
        """Tasks whose process runs now (whatever their desired state)."""
        return [t for t in self.tasks(sid) if t.status.state == TaskState.RUNNING]

    def update_state(self, sid: str) -> str:
        st = self.service(sid).update_status
        return st.state if st is not None else ""

    def update_message(self, sid: str) -> str:
        st = self.service(sid).update_status
        return st.message if st is not None else ""

    def converged(self, sid: str, n: int, *, spec_version: int | None = None) -> bool:
        """Exactly `n` tasks running, all made from the service's current task template (or from
        `spec_version`), all meant to run, and no other task that is not finished."""
        svc = self.service(sid)

        def current(t: Task) -> bool:
            if spec_version is not None:
                return t.spec_version == spec_version
            return t.spec == svc.spec.task_template

        live = self.live(sid)
        unfinished = [t for t in self.tasks(sid) if t.status.state < TaskState.COMPLETE
                      and (t.desired_state <= TaskState.RUNNING or t.node_id)]
        return (len(live) == n and len(unfinished) == n
                and all(current(t) and t.desired_state == TaskState.RUNNING for t in live))

    async def wait_until(self, pred: Callable[[], bool], timeout: float = 300.0, what: str = "") -> float:
        """Wait (in virtual time) until `pred()` holds, re-checking after every store commit; return the
        virtual time it first held. Fails the test after `timeout` virtual seconds."""
        deadline = self.clock.elapsed + timeout
        sub = self.store.watch(limit=10_000_000)
        try:
            while not pred():
                remaining = deadline - self.clock.elapsed
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout} virtual seconds waiting for "
                                         f"{what or pred}")
                getter = asyncio.ensure_future(sub.get())
                sleeper = asyncio.ensure_future(self.clock.sleep(remaining))
                try:
                    await asyncio.wait({getter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    getter.cancel()
                    sleeper.cancel()
                sub.drain()
        finally:
            sub.close()
        return self.clock.elapsed

    async def run_for(self, seconds: float) -> None:
        await self.clock.run_for(seconds)

    # --- the log ------------------------------------------------------------------------------------

    def task_changes(self, sid: str | None = None) -> list[tuple[float, Task, Task | None]]:
        out: list[tuple[float, Task, Task | None]] = []
        for c in self.log:
            if c.kind == "task" and c.action != "remove" and isinstance(c.obj, Task) \
                    and (sid is None or c.obj.service_id == sid):
                out.append((c.at, c.obj, c.old if isinstance(c.old, Task) else None))
        return out

    def first_time(self, pred: Callable[[Task], bool], sid: str | None = None) -> float | None:
        """The virtual time at which a task first satisfied `pred`."""
        for at, t, _ in self.task_changes(sid):
            if pred(t):
                return at
        return None

    def concurrency(self, sid: str, pred: Callable[[Task], bool], since: int = 0) -> list[int]:
        """How many tasks of the service satisfy `pred` after each commit from entry `since` of the log on (an
        index into `log`, e.g. its length before an action)."""
        cur: dict[str, Task] = {}
        out: list[int] = []
        for i, c in enumerate(self.log):
            if c.kind == "commit":
                if i >= since:
                    out.append(sum(1 for t in cur.values() if pred(t)))
                continue
            if c.kind != "task" or not isinstance(c.obj, Task) or c.obj.service_id != sid:
                continue
            if c.action == "remove":
                cur.pop(c.obj.id, None)
            else:
                cur[c.obj.id] = c.obj
        return out

    def max_concurrent(self, sid: str, pred: Callable[[Task], bool]) -> int:
        """The most tasks of the service satisfying `pred` at once, over the whole run (after each commit)."""
        return max(self.concurrency(sid, pred), default=0)

    def update_states(self, sid: str) -> list[str]:
        """The sequence of distinct UpdateStatus states the service went through."""
        out: list[str] = []
        for c in self.log:
            if c.kind == "service" and isinstance(c.obj, Service) and c.obj.id == sid:
                st = c.obj.update_status.state if c.obj.update_status is not None else ""
                if not out or out[-1] != st:
                    out.append(st)
        return out
