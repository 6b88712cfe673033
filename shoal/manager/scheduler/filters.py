"""Feasibility filters: one small object per reason a node can refuse a task (swarmkit's filter.go).

`set_task` precomputes what depends only on the task and returns False when the filter does not apply;
`check` is the per-node predicate; `explain` is the user-facing reason, worded as swarmkit words it, since
it ends up in `docker service ps` output.

`STATIC` filters depend only on the node object, so the scheduler evaluates them once per task group;
the others depend on what is already placed on the node and are re-checked before every placement.
"""

from __future__ import annotations

from typing import Protocol

from shoal.errors import InvalidArgument
from shoal.manager.scheduler.constraints import Constraint, matches_all, parse_constraints
from shoal.manager.scheduler.nodeinfo import HostPort, NodeInfo, host_ports, reservations
from shoal.model.objects import GenericResource, Platform, Task


class Filter(Protocol):
    def set_task(self, task: Task) -> bool: ...

    def check(self, node: NodeInfo) -> bool: ...

    def explain(self, n_nodes: int) -> str: ...


def _on(n: int, what: str) -> str:
    return f"{what} on 1 node" if n == 1 else f"{what} on {n} nodes"


class ReadyFilter:
    static = True

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, node: NodeInfo) -> bool:
        n = node.node
        return n.status.state == "ready" and n.spec.availability == "active"

    def explain(self, n_nodes: int) -> str:
        if n_nodes == 1:
            return "1 node not available for new tasks"
        return f"{n_nodes} nodes not available for new tasks"


class ResourceFilter:
    static = False

    def __init__(self) -> None:
        self.cpus = 0
        self.memory = 0
        self.generic: tuple[GenericResource, ...] = ()

    def set_task(self, task: Task) -> bool:
        r = reservations(task)
        if r is None or (r.nano_cpus == 0 and r.memory_bytes == 0 and not r.generic):
            return False
        self.cpus, self.memory, self.generic = r.nano_cpus, r.memory_bytes, r.generic
        return True

    def check(self, node: NodeInfo) -> bool:
        return (
            self.cpus <= node.avail_cpus
            and self.memory <= node.avail_memory
            and (not self.generic or node.has_generic(self.generic))
        )

    def explain(self, n_nodes: int) -> str:
        return _on(n_nodes, "insufficient resources")


class ConstraintFilter:
    static = True

    def __init__(self) -> None:
        self.constraints: list[Constraint] = []

    def set_task(self, task: Task) -> bool:
        p = task.spec.placement
        if p is None or not p.constraints:
            return False
        try:
            self.constraints = parse_constraints(p.constraints)
        except InvalidArgument:
            # validated at service create; a bad one here disables the filter, as in swarmkit
            return False
        return True

    def check(self, node: NodeInfo) -> bool:
        return matches_all(self.constraints, node.node)

    def explain(self, n_nodes: int) -> str:
        return _on(n_nodes, "scheduling constraints not satisfied")


_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}


def _platform_ok(want: Platform, have: Platform) -> bool:
    want_arch = _ARCH_ALIASES.get(want.architecture, want.architecture)
    have_arch = _ARCH_ALIASES.get(have.architecture, have.architecture)
    return (not want_arch or want_arch == have_arch) and (not want.os or want.os == have.os)


class PlatformFilter:
    static = True

    def __init__(self) -> None:
        self.platforms: tuple[Platform, ...] = ()

    def set_task(self, task: Task) -> bool:
        p = task.spec.placement
        if p is None or not p.platforms:
            return False
        self.platforms = p.platforms
        return True

    def check(self, node: NodeInfo) -> bool:
        have = node.node.description.platform
        return any(_platform_ok(w, have) for w in self.platforms)

    def explain(self, n_nodes: int) -> str:
        return _on(n_nodes, "unsupported platform")


class HostPortFilter:
    static = False

    def __init__(self) -> None:
        self.ports: tuple[HostPort, ...] = ()

    def set_task(self, task: Task) -> bool:
        self.ports = host_ports(task)
        return bool(self.ports)

    def check(self, node: NodeInfo) -> bool:
        return node.has_ports(self.ports)

    def explain(self, n_nodes: int) -> str:
        return _on(n_nodes, "host-mode port already in use")


class MaxReplicasFilter:
    static = False

    def __init__(self) -> None:
        self.service_id = ""
        self.max_replicas = 0

    def set_task(self, task: Task) -> bool:
        p = task.spec.placement
        if p is None or p.max_replicas <= 0:
            return False
        self.service_id, self.max_replicas = task.service_id, p.max_replicas
        return True

    def check(self, node: NodeInfo) -> bool:
        return node.active_by_service.get(self.service_id, 0) < self.max_replicas

    def explain(self, n_nodes: int) -> str:
        return "max replicas per node limit exceed"


def default_filters() -> list[Filter]:
    """Fresh filter objects in swarmkit's order: readiness first, then resources, then the rest."""
    return [ReadyFilter(), ResourceFilter(), ConstraintFilter(), PlatformFilter(), HostPortFilter(),
            MaxReplicasFilter()]


def is_static(f: Filter) -> bool:
    """Whether a filter's verdict on a node cannot change while tasks are placed (unknown filters: no)."""
    return bool(getattr(f, "static", False))
