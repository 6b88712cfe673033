"""What the scheduler knows about one node: its tasks, what they hold, and what is left.

A `NodeInfo` is mutable and owned by the scheduler; nothing else may change it. Two notions, as in swarmkit:

* a task is *held* by the node while it is assigned there and not finished (ASSIGNED <= observed < COMPLETE):
  it keeps its reservations, named generic resources and host-mode ports until the agent reports it ended,
  so a task being stopped still blocks what it uses;
* a held task is *active* (counted per service and in total, for spreading and max-replicas) while its
  desired state is <= COMPLETE (RUNNING for services, COMPLETE for jobs).

A PENDING task with a node id (global services) is not held: it is pre-assigned, not yet admitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shoal.model.objects import GenericResource, Node, Resources, Task
from shoal.model.state import TaskState

# A node with this many failures of a service's current spec within MONITOR_FAILURES seconds ranks last.
MONITOR_FAILURES = 300.0
MAX_FAILURES = 5

HostPort = tuple[str, int]


def host_ports(task: Task) -> tuple[HostPort, ...]:
    """The (protocol, port) pairs a task publishes in host mode.

    The allocated ports are authoritative; before allocation the endpoint spec says what the user asked for.
    """
    ep = task.endpoint
    if ep is None:
        return ()
    ports = ep.ports or ep.spec.ports
    if not ports:
        return ()
    return tuple(
        (p.protocol, p.published_port) for p in ports if p.publish_mode == "host" and p.published_port != 0
    )


def reservations(task: Task) -> Resources | None:
    r = task.spec.resources
    return None if r is None else r.reservations


def is_held(task: Task) -> bool:
    return TaskState.ASSIGNED <= task.status.state < TaskState.COMPLETE


def is_counted(task: Task) -> bool:
    return task.desired_state <= TaskState.COMPLETE


@dataclass(slots=True)
class _Held:
    task: Task
    counted: bool
    named: tuple[GenericResource, ...]  # the named generic resources claimed for this task
    ports: tuple[HostPort, ...]


@dataclass(slots=True, eq=False)
class NodeInfo:
    node: Node
    # task id -> what the task holds here; a tentative placement is kept under its pre-placement object
    # until the store echoes the assigned task back
    _held: dict[str, _Held] = field(default_factory=dict)
    active_count: int = 0
    active_by_service: dict[str, int] = field(default_factory=dict)
    avail_cpus: int = 0
    avail_memory: int = 0
    avail_discrete: dict[str, int] = field(default_factory=dict)
    avail_named: dict[str, list[str]] = field(default_factory=dict)  # kind -> free names, sorted
    used_ports: dict[HostPort, int] = field(default_factory=dict)  # a count, so a clash never frees a port
    # (service id, spec version) -> failure timestamps, oldest first
    failures: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    id: str = ""  # node.id, kept flat because the scheduler's sort keys read it for every node

    def __post_init__(self) -> None:
        self.id = self.node.id
        self._recompute()

    @property
    def tasks(self) -> Mapping[str, Task]:
        return {tid: h.task for tid, h in self._held.items()}

    def holds(self, task_id: str) -> bool:
        """Whether the task is held here (without building the `tasks` mapping)."""
        return task_id in self._held

    @property
    def available(self) -> Resources:
        generic = [GenericResource(kind=k, value=v) for k, v in sorted(self.avail_discrete.items()) if v > 0]
        generic += [GenericResource(kind=k, named=n) for k, names in sorted(self.avail_named.items())
                    for n in names]
        return Resources(nano_cpus=self.avail_cpus, memory_bytes=self.avail_memory, generic=tuple(generic))

    def assigned_generic(self, task_id: str) -> tuple[GenericResource, ...]:
        """The named generic resources (e.g. GPU ids) claimed for a held task."""
        h = self._held.get(task_id)
        return () if h is None else h.named

    # --- node changes ---------------------------------------------------------------------------

    def set_node(self, node: Node) -> None:
        """Take a new version of the node (resources may have changed) and re-derive what is left."""
        self.node = node
        self.id = node.id
        self._recompute()

    def _recompute(self) -> None:
        res = self.node.description.resources
        self.avail_cpus = res.nano_cpus
        self.avail_memory = res.memory_bytes
        self.avail_discrete = {}
        named: dict[str, set[str]] = {}
        for g in res.generic:
            if g.named:
                named.setdefault(g.kind, set()).add(g.named)
            else:
                self.avail_discrete[g.kind] = self.avail_discrete.get(g.kind, 0) + g.value
        for h in self._held.values():
            r = reservations(h.task)
            if r is None:
                continue
            self.avail_cpus -= r.nano_cpus
            self.avail_memory -= r.memory_bytes
            for g in r.generic:
                if g.kind in self.avail_discrete:
                    self.avail_discrete[g.kind] -= g.value
            # claims on names the node no longer offers are dropped rather than reclaimed later
            h.named = tuple(c for c in h.named if c.named in named.get(c.kind, ()))
            for c in h.named:
                named[c.kind].discard(c.named)
        self.avail_named = {k: sorted(v) for k, v in named.items()}

    # --- task changes ---------------------------------------------------------------------------

    def add_task(self, task: Task) -> bool:
        """Track `task` as the store reports it; returns whether the accounting changed.

        A task not held by this node (another node, not admitted yet, or finished) is removed instead.
        """
        if task.node_id != self.node.id or not is_held(task):
            return self.remove_task(task)
        return self.place(task)

    def place(self, task: Task) -> bool:
        """Hold `task` here whatever its node id and state say: the scheduler's tentative placement."""
        counted = is_counted(task)
        h = self._held.get(task.id)
        if h is not None:
            h.task = task
            if h.counted == counted:
                return False
            h.counted = counted
            self._count(task.service_id, 1 if counted else -1)
            return True
        r = reservations(task)
        named: tuple[GenericResource, ...] = ()
        if r is not None:
            self.avail_cpus -= r.nano_cpus
            self.avail_memory -= r.memory_bytes
            if r.generic:
                named = self._claim(r.generic)
        ports = host_ports(task)
        for p in ports:
            self.used_ports[p] = self.used_ports.get(p, 0) + 1
        self._held[task.id] = _Held(task, counted, named, ports)
        if counted:
            self._count(task.service_id, 1)
        return True

    def remove_task(self, task: Task) -> bool:
        h = self._held.pop(task.id, None)
        if h is None:
            return False
        if h.counted:
            self._count(h.task.service_id, -1)
        r = reservations(h.task)
        if r is not None:
            self.avail_cpus += r.nano_cpus
            self.avail_memory += r.memory_bytes
            for g in r.generic:
                if g.kind in self.avail_discrete:
                    self.avail_discrete[g.kind] += g.value
            for c in h.named:
                names = self.avail_named.setdefault(c.kind, [])
                names.append(c.named)
                names.sort()
        for p in h.ports:
            n = self.used_ports[p] - 1
            if n:
                self.used_ports[p] = n
            else:
                del self.used_ports[p]
        return True

    def _count(self, service_id: str, delta: int) -> None:
        self.active_count += delta
        n = self.active_by_service.get(service_id, 0) + delta
        if n:
            self.active_by_service[service_id] = n
        else:
            self.active_by_service.pop(service_id, None)

    def _claim(self, wanted: tuple[GenericResource, ...]) -> tuple[GenericResource, ...]:
        claimed: list[GenericResource] = []
        for g in wanted:
            if g.kind in self.avail_discrete:
                self.avail_discrete[g.kind] -= g.value
            elif g.kind in self.avail_named:
                names = self.avail_named[g.kind]
                take, self.avail_named[g.kind] = names[: g.value], names[g.value :]
                claimed += [GenericResource(kind=g.kind, named=n) for n in take]
        return tuple(claimed)

    def has_generic(self, wanted: tuple[GenericResource, ...]) -> bool:
        for g in wanted:
            if g.kind in self.avail_discrete:
                if self.avail_discrete[g.kind] < g.value:
                    return False
            elif len(self.avail_named.get(g.kind, ())) < g.value:
                return False
        return True

    def has_ports(self, ports: tuple[HostPort, ...]) -> bool:
        return not any(p in self.used_ports for p in ports)

    # --- failures -------------------------------------------------------------------------------

    def task_failed(self, service_id: str, spec_version: int, at: float) -> None:
        """Record that a task of this service version failed or was rejected here at time `at`."""
        key = (service_id, spec_version)
        times = [t for t in self.failures.get(key, ()) if at - t < MONITOR_FAILURES]
        times.append(at)
        self.failures[key] = times
        # forget services that stopped failing so the map stays small
        for k in [k for k, v in self.failures.items() if v and at - v[-1] >= MONITOR_FAILURES]:
            del self.failures[k]

    def recent_failures(self, service_id: str, spec_version: int, now: float) -> int:
        times = self.failures.get((service_id, spec_version))
        if not times:
            return 0
        return sum(1 for t in times if now - t <= MONITOR_FAILURES)
