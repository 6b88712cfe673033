"""Rebalancing: a node that joins or comes back to active gets its share of a replicated service's tasks.

Swarm never moves a running task to a node that joined later (moby#24103, swarmkit#310). Shoal does, for the
services that ask for it (`com.shoal.rebalance=true` on the service, or on the cluster's spec as the default;
`false` on a service opts it out), moving them gradually:

- A task moves from the node holding most of the service's tasks to the *settled* node holding fewest, when the
  two differ by two or more (a move then always lowers the spread, so two nodes never trade a task back and
  forth). A node is settled once it has been ready and active, without a break, for `settle` seconds (30 s, or
  the cluster label `com.shoal.rebalance.settle`): a node that flaps attracts nothing.
- The destination must satisfy the service's constraints; its replacement is assigned to it and checked by the
  scheduler like a global service's task (resources, max replicas per node); one the scheduler cannot take
  within `settle` is given up (removed) and the old task stays.
- At most the update parallelism of moves at once (0: no limit), `delay` between their starts. With update order
  start-first the replacement starts first and the old task stops once it runs (the drain's move, shared:
  `LABEL_REPLACES`); with stop-first the old task stops first and its replacement, held until then, starts
  after.
- With placement preferences (`spread=node.labels.zone`), the counts are those of the preference tree the
  scheduler spreads over: a task moves from the fullest node of the fullest branch to the emptiest settled node
  of the emptiest branch, when the branches where the two part differ by two or more.
- A service in an update or a rollback (or paused in one), a job or a global service is left alone.

The settle clock is the leader's own: after a failover a new leader waits a full `settle` before moving
anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from shoal.manager.scheduler.core import preference_key
from shoal.model.objects import Node, Service, Task
from shoal.model.state import TaskState
from shoal.store.memory import Tx

LABEL_REBALANCE = "com.shoal.rebalance"
LABEL_SETTLE = "com.shoal.rebalance.settle"
LABEL_MOVE = "com.shoal.move"  # on a replacement: "drain" or "rebalance"
DEFAULT_SETTLE = 30.0
_BUSY = ("updating", "paused", "rollback_started", "rollback_paused")


class _Spread:
    """The service's tasks over the preference tree (one level per placement preference, as the scheduler
    spreads them; without preferences just the nodes): a node's `potential` is the count of its branch at each
    level, then its own, so the fullest node of the fullest branch compares highest."""

    def __init__(self, nodes: dict[str, Node], getters: list[Callable[[Node], str]], count: dict[str, int]) -> None:
        self.nodes, self.getters, self.count = nodes, getters, count

    def key(self, nid: str) -> tuple[str, ...]:
        n = self.nodes.get(nid)
        return tuple(g(n) for g in self.getters) if n is not None else ("",) * len(self.getters)

    def branch(self, prefix: tuple[str, ...]) -> int:
        return sum(c for nid, c in self.count.items() if self.key(nid)[:len(prefix)] == prefix)

    def potential(self, nid: str) -> tuple[int, ...]:
        k = self.key(nid)
        return (*(self.branch(k[:i + 1]) for i in range(len(k))), self.count.get(nid, 0))

    def narrows(self, src: str, dest: str) -> bool:
        """Whether one task from `src` to `dest` narrows the spread where they first part (their branches at the
        highest level that differs, else the two nodes): only a difference of two or more does."""
        ks, kd = self.key(src), self.key(dest)
        for i in range(len(ks)):
            if ks[:i + 1] != kd[:i + 1]:
                return self.branch(ks[:i + 1]) - self.branch(kd[:i + 1]) >= 2
        return self.count.get(src, 0) - self.count.get(dest, 0) >= 2


def opted_in(svc: Service, cluster_labels: dict[str, str]) -> bool:
    own = svc.spec.annotations.labels.get(LABEL_REBALANCE)
    if own is not None:
        return own.strip().lower() == "true"
    return cluster_labels.get(LABEL_REBALANCE, "").strip().lower() == "true"


def settle_seconds(cluster_labels: dict[str, str]) -> float:
    raw = cluster_labels.get(LABEL_SETTLE, "").strip().lower().removesuffix("s")
    try:
        v = float(raw)
    except ValueError:
        return DEFAULT_SETTLE
    return v if v >= 0 else DEFAULT_SETTLE


@dataclass
class Rebalancer:
    """The leader's memory for rebalancing: since when each node is usable, when each service last moved a task,
    and when the orchestrator should look again (`wakeups`: service ID -> time)."""

    eligible: Callable[[Node], bool]
    constraint_check: Callable[[Service, Node], bool]
    since: dict[str, float] = field(default_factory=dict)
    last_move: dict[str, float] = field(default_factory=dict)
    wakeups: dict[str, float] = field(default_factory=dict)

    def observe_nodes(self, nodes: dict[str, Node], now: float) -> None:
        for nid, n in nodes.items():
            if self.eligible(n):
                self.since.setdefault(nid, now)
            else:
                self.since.pop(nid, None)
        for nid in [k for k in self.since if k not in nodes]:
            del self.since[nid]

    def plan(self, tx: Tx, svc: Service, service_tasks: Callable[[], list[Task]], nodes: dict[str, Node],
             make: Callable[[Task, str], Task], replaces: str) -> None:
        """Start the moves `svc` is due, through `make(old task, destination node)` (a replacement, not yet
        written); `replaces` is the label naming the task a replacement replaces. `service_tasks()` gives the
        service's tasks, asked for only when the service rebalances."""
        self.wakeups.pop(svc.id, None)
        cluster = tx.cluster()
        labels = dict(cluster.spec.annotations.labels) if cluster is not None else {}
        if svc.spec.mode.kind != "replicated" or not opted_in(svc, labels):
            return
        if svc.update_status is not None and svc.update_status.state in _BUSY:
            return
        tasks = service_tasks()
        placement = svc.spec.task_template.placement
        getters = [g for g in (preference_key(d) for d in (placement.preferences if placement else ())) if g]
        now, settle = tx.now, settle_seconds(labels)
        by_id = {t.id: t for t in tasks}
        self._give_up_stuck(tx, tasks, now, settle, replaces)
        in_flight = [t for t in tasks if replaces in t.annotations.labels and t.desired_state <= TaskState.RUNNING
                     and (old := by_id.get(t.annotations.labels[replaces])) is not None
                     and old.status.state < TaskState.COMPLETE]
        cfg = svc.spec.update_config
        limit = (cfg.parallelism if cfg is not None else 1) or len(tasks) + 1
        delay = (cfg.delay if cfg is not None else 0) / 1e9
        moving = {t.annotations.labels[replaces] for t in in_flight}
        # Where the service's tasks are (a task being moved counts at its replacement's node).
        count: dict[str, int] = {}
        movable: dict[str, list[Task]] = {}
        for t in tasks:
            if t.desired_state > TaskState.RUNNING or t.status.state >= TaskState.COMPLETE or not t.node_id:
                continue
            if t.id in moving:
                continue
            count[t.node_id] = count.get(t.node_id, 0) + 1
            if t.status.state == TaskState.RUNNING and replaces not in t.annotations.labels:
                movable.setdefault(t.node_id, []).append(t)
        max_per_node = placement.max_replicas if placement is not None else 0
        dests: list[str] = []
        next_settled: float | None = None
        for nid, n in nodes.items():
            if nid not in self.since or not self.constraint_check(svc, n):
                continue
            if max_per_node and count.get(nid, 0) >= max_per_node:
                continue
            ready_at = self.since[nid] + settle
            if ready_at <= now:
                dests.append(nid)
            elif next_settled is None or ready_at < next_settled:
                next_settled = ready_at
        if next_settled is not None:
            self.wakeups[svc.id] = next_settled
        spread = _Spread(nodes, getters, count)
        while dests and len(in_flight) < limit:
            due = self.last_move.get(svc.id, -1e18) + delay
            if due > now:
                self.wakeups[svc.id] = min(self.wakeups.get(svc.id, due), due)
                return
            sources = [nid for nid in movable if movable[nid]]
            if not sources:
                return
            dest = min(dests, key=lambda nid: (spread.potential(nid), nid))
            src = max(sources, key=lambda nid: (spread.potential(nid), nid))
            if not spread.narrows(src, dest):
                return
            old = max(movable[src], key=lambda t: t.slot)
            movable[src].remove(old)
            new = make(old, dest)
            start_first = cfg is not None and cfg.order == "start-first"
            if not start_first:
                # Held until the old task has stopped (see Reconciler's moves).
                new = replace(new, desired_state=TaskState.READY)
                tx.update(replace(old, desired_state=TaskState.SHUTDOWN))
            tx.create(new)
            in_flight.append(new)
            count[src] -= 1
            count[dest] = count.get(dest, 0) + 1
            if max_per_node and count[dest] >= max_per_node:
                dests.remove(dest)
            self.last_move[svc.id] = now

    def _give_up_stuck(self, tx: Tx, tasks: list[Task], now: float, settle: float, replaces: str) -> None:
        """A rebalancing replacement the scheduler has not taken within `settle` goes; its old task stays."""
        for t in tasks:
            if t.annotations.labels.get(LABEL_MOVE) != "rebalance" or replaces not in t.annotations.labels:
                continue
            if t.desired_state <= TaskState.RUNNING and t.status.state == TaskState.PENDING \
                    and now - t.meta.created_at >= settle:
                tx.update(replace(t, desired_state=TaskState.REMOVE))
            elif t.status.state == TaskState.PENDING and t.desired_state <= TaskState.RUNNING:
                self.wakeups[t.service_id] = min(self.wakeups.get(t.service_id, now + settle),
                                                 t.meta.created_at + settle)
