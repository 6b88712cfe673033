"""The scheduler's decision core: pure, synchronous, deterministic for a given `random.Random`.

The store-driven runner feeds it node and task changes (`upsert_node`, `remove_node`, `add_task`,
`remove_task`), asks `schedule(pending_tasks, now)` for decisions, writes them in one batch, and calls
`remove_task` for any placement whose write failed. Placements are recorded in the `NodeInfo`s as soon as
they are decided, so later groups of the same call (and later calls) see them.

How a group of identical tasks (same service and spec version) is placed, following swarmkit:
1. the pipeline's static filters (readiness, constraints, platform) pick the eligible nodes once, cached
   until a node changes;
2. with placement preferences, all nodes are arranged in a tree, one level per preference, and the tasks
   are split across branches so that each branch ends up with an even share of the service's tasks;
3. within a leaf, a strategy orders the eligible nodes; before each placement the best node is re-checked
   against the dynamic filters (resources, host ports, max replicas). Placing only consumes, so a node
   that fails once is dropped for the rest of the group: each placement is O(log nodes).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from shoal.manager.scheduler.constraints import ENGINE_LABEL_PREFIX, NODE_LABEL_PREFIX
from shoal.manager.scheduler.nodeinfo import MAX_FAILURES, NodeInfo, is_held
from shoal.manager.scheduler.pipeline import NO_SUITABLE_NODE, Pipeline
from shoal.model.objects import Node, Task
from shoal.model.state import TaskState

STRATEGY_LABEL = "com.shoal.scheduler.strategy"
STRATEGIES = ("spread", "binpack", "random")
ASSIGNED_MESSAGE = "scheduler assigned task to node"

_Check = Callable[[NodeInfo], bool]
_ELIGIBLE_CACHE_SIZE = 256


class Decision(NamedTuple):
    """One task's placement (a tuple: one is made per task placed, and a frozen dataclass costs three times as
    much to make)."""

    task_id: str
    node_id: str | None  # None: no node fits now; the task stays pending with `message` as its error
    message: str


# --- strategies: each orders one leaf's eligible nodes ----------------------------------------------


class _Picker:
    """Hands out the next node to place one task on; `placed` is called right after with that node."""

    def pick(self) -> NodeInfo | None:
        raise NotImplementedError

    def placed(self, node: NodeInfo) -> None:
        pass


def _fits(node: NodeInfo, checks: list[_Check]) -> bool:
    for c in checks:
        if not c(node):
            return False
    return True


_Entry = tuple[object, ...]  # a sort key whose last two items are the node id (unique) and the NodeInfo


class _HeapPicker(_Picker):
    """Always the node with the smallest key; the entry of the node just used is refreshed."""

    def __init__(self, entries: list[_Entry], entry: Callable[[NodeInfo], _Entry],
                 checks: list[_Check]) -> None:
        self._entry = entry
        self._checks = checks
        # the unique node id precedes the NodeInfo in every entry, so NodeInfos are never compared
        self._heap = entries
        heapq.heapify(entries)

    def pick(self) -> NodeInfo | None:
        heap, checks = self._heap, self._checks
        while heap:
            node: NodeInfo = heap[0][-1]  # type: ignore[assignment]
            if not checks or _fits(node, checks):
                return node
            heapq.heappop(heap)
        return None

    def placed(self, node: NodeInfo) -> None:
        heapq.heapreplace(self._heap, self._entry(node))


class _RandomPicker(_Picker):
    def __init__(self, nodes: list[NodeInfo], rng: random.Random, checks: list[_Check]) -> None:
        self._nodes = list(nodes)
        self._rng = rng
        self._checks = checks

    def pick(self) -> NodeInfo | None:
        nodes = self._nodes
        while nodes:
            i = self._rng.randrange(len(nodes))
            node = nodes[i]
            if not self._checks or _fits(node, self._checks):
                return node
            nodes[i] = nodes[-1]
            nodes.pop()
        return None


def _spread_picker(service_id: str, penalty: dict[str, int],
                   checks: list[_Check]) -> Callable[[list[NodeInfo]], _Picker]:
    # fewest tasks of this service, then fewest tasks, then node id; repeat offenders last
    def entry(n: NodeInfo) -> _Entry:
        return (penalty.get(n.id, 0), n.active_by_service.get(service_id, 0), n.active_count, n.id, n)

    def make(nodes: list[NodeInfo]) -> _Picker:
        # inlined key: building entries for every node of every group is the hot loop on large clusters
        if penalty:
            entries: list[_Entry] = [entry(n) for n in nodes]
        else:
            entries = [(0, n.active_by_service.get(service_id, 0), n.active_count, n.id, n) for n in nodes]
        return _HeapPicker(entries, entry, checks)

    return make


def _binpack_entry(n: NodeInfo) -> _Entry:
    # least remaining cpu, then memory (absolute, so small nodes fill before big ones), then the busiest
    return (n.avail_cpus, n.avail_memory, -n.active_count, n.id, n)


def _binpack_picker(checks: list[_Check]) -> Callable[[list[NodeInfo]], _Picker]:
    return lambda nodes: _HeapPicker([_binpack_entry(n) for n in nodes], _binpack_entry, checks)


# --- placement preferences --------------------------------------------------------------------------


def preference_key(descriptor: str) -> Callable[[Node], str] | None:
    """A placement preference (`spread=node.labels.zone`) as the node's value it spreads over; None for one the
    scheduler ignores."""
    return _pref_getter(descriptor)


def _pref_getter(descriptor: str) -> Callable[[Node], str] | None:
    d = descriptor.strip()
    if d.lower().startswith("spread="):
        d = d[len("spread="):].strip()
    low = d.lower()
    if len(d) > len(NODE_LABEL_PREFIX) and low.startswith(NODE_LABEL_PREFIX):
        name = d[len(NODE_LABEL_PREFIX):]
        return lambda n: n.spec.annotations.labels.get(name, "")
    if len(d) > len(ENGINE_LABEL_PREFIX) and low.startswith(ENGINE_LABEL_PREFIX):
        name = d[len(ENGINE_LABEL_PREFIX):]
        return lambda n: n.description.engine.labels.get(name, "")
    return None  # other descriptors are ignored, as in swarmkit


class _Branch:
    __slots__ = ("children", "nodes", "picker", "tasks")

    def __init__(self) -> None:
        self.tasks = 0  # this service's active tasks under this branch, placements included
        self.children: dict[str, _Branch] | None = None
        self.nodes: list[NodeInfo] = []  # leaf only: eligible nodes
        self.picker: _Picker | None = None


class _GroupRun:
    """Places one group's tasks and records the decisions."""

    def __init__(self, sched: Scheduler, tasks: list[Task], make_picker: Callable[[list[NodeInfo]], _Picker],
                 out: list[Decision]) -> None:
        self.sched = sched
        self.tasks = tasks
        self.next = 0
        self.make_picker = make_picker
        self.out = out

    def fill_leaf(self, leaf: _Branch, n: int) -> int:
        if leaf.picker is None:
            leaf.picker = self.make_picker(leaf.nodes)
        picker, tasks, out, where = leaf.picker, self.tasks, self.out, self.sched._task_node
        done = 0
        while done < n:
            node = picker.pick()
            if node is None:
                break
            t = tasks[self.next]
            self.next += 1
            node.place(t)
            picker.placed(node)
            where[t.id] = node.id
            out.append(Decision(t.id, node.id, ASSIGNED_MESSAGE))
            done += 1
        return done

    def fill(self, branch: _Branch, n: int) -> int:
        """Place up to `n` tasks under `branch`, evening out the service's tasks across its children."""
        if branch.children is None:
            return self.fill_leaf(branch, n)
        placed = 0
        usable = [branch.children[k] for k in sorted(branch.children)]
        while placed < n and usable:
            remaining = n - placed
            desired, extra = divmod(sum(c.tasks for c in usable) + remaining, len(usable))
            full: set[int] = set()
            # the emptiest branches get the remainder; sorting is stable, so ties keep label order
            for i, c in enumerate(sorted(usable, key=lambda c: c.tasks)):
                want = min(desired + (1 if i < extra else 0) - c.tasks, n - placed)
                if want <= 0:
                    continue
                got = self.fill(c, want)
                c.tasks += got
                placed += got
                if got < want:
                    full.add(id(c))  # placing only consumes: this branch is done for the group
            usable = [c for c in usable if id(c) not in full]
        return placed


# --- the scheduler ----------------------------------------------------------------------------------


class Scheduler:
    def __init__(self, rng: random.Random | None = None, default_strategy: str = "spread") -> None:
        if default_strategy not in STRATEGIES:
            raise ValueError(f"unknown scheduling strategy {default_strategy!r}")
        self.rng = rng if rng is not None else random.Random(0)
        self.default_strategy = default_strategy
        self.nodes: dict[str, NodeInfo] = {}
        self._task_node: dict[str, str] = {}  # held task id -> node id
        self._orphans: dict[str, dict[str, Task]] = {}  # tasks seen before their node, by node id
        self._pipeline = Pipeline()
        self._sorted: list[NodeInfo] | None = None
        self._eligible: dict[tuple[object, ...], list[NodeInfo]] = {}

    # --- keeping state current ------------------------------------------------------------------

    def upsert_node(self, node: Node) -> None:
        ni = self.nodes.get(node.id)
        if ni is not None:
            ni.set_node(node)
        else:
            ni = self.nodes[node.id] = NodeInfo(node)
            for t in self._orphans.pop(node.id, {}).values():
                if ni.add_task(t):
                    self._task_node[t.id] = node.id
        self._nodes_changed()

    def remove_node(self, node_id: str) -> None:
        ni = self.nodes.pop(node_id, None)
        if ni is not None:
            for tid in ni.tasks:
                self._task_node.pop(tid, None)
            self._nodes_changed()
        self._orphans.pop(node_id, None)

    def _nodes_changed(self) -> None:
        self._sorted = None
        self._eligible.clear()

    def add_task(self, task: Task) -> bool:
        """Take a task as the store now has it; returns whether any node's accounting changed."""
        changed = False
        prev = self._task_node.get(task.id)
        if prev is not None and prev != task.node_id:
            changed = self._release(task, prev)
            prev = None
        if task.status.state in (TaskState.FAILED, TaskState.REJECTED) and prev is not None:
            # only on the transition out of a held state, so a repeated event is not counted twice
            self.nodes[prev].task_failed(task.service_id, task.spec_version, task.status.timestamp)
        ni = self.nodes.get(task.node_id) if task.node_id else None
        if ni is None:
            if task.node_id and is_held(task):
                self._orphans.setdefault(task.node_id, {})[task.id] = task
            else:
                self._drop_orphan(task)
            return changed
        changed = ni.add_task(task) or changed
        if ni.holds(task.id):
            self._task_node[task.id] = ni.id
        else:
            self._task_node.pop(task.id, None)
        return changed

    def remove_task(self, task: Task) -> bool:
        """Forget a task: deleted, or a placement whose store write failed."""
        self._drop_orphan(task)
        prev = self._task_node.get(task.id)
        return prev is not None and self._release(task, prev)

    def _release(self, task: Task, node_id: str) -> bool:
        del self._task_node[task.id]
        ni = self.nodes.get(node_id)
        return ni is not None and ni.remove_task(task)

    def _drop_orphan(self, task: Task) -> None:
        for waiting in self._orphans.values():
            waiting.pop(task.id, None)

    # --- deciding -------------------------------------------------------------------------------

    def schedule(self, tasks: Sequence[Task], now: float) -> list[Decision]:
        """Decide a node for each task; decisions come out grouped, not in input order."""
        out: list[Decision] = []
        groups: dict[tuple[str, int], list[Task]] = {}
        for t in tasks:
            if t.id in self._task_node:
                # handed back as unplaced: whatever we held for it is stale
                self._release(t, self._task_node[t.id])
            if t.node_id:
                self._fit_preassigned(t, out)
            elif t.service_id:
                groups.setdefault((t.service_id, t.spec_version), []).append(t)
            else:
                self._schedule_group([t], now, out)
        for group in groups.values():
            self._schedule_group(group, now, out)
        return out

    def strategy_for(self, task: Task) -> str:
        s = task.service_annotations.labels.get(STRATEGY_LABEL, "")
        return s if s in STRATEGIES else self.default_strategy

    def _all_sorted(self) -> list[NodeInfo]:
        if self._sorted is None:
            self._sorted = [self.nodes[k] for k in sorted(self.nodes)]
        return self._sorted

    def _eligible_nodes(self, task: Task, static: list[_Check]) -> list[NodeInfo]:
        # the static filters depend only on the node objects and these placement fields
        p = task.spec.placement
        key = (p.constraints, p.platforms) if p is not None else ((), ())
        hit = self._eligible.get(key)
        if hit is None:
            if len(self._eligible) >= _ELIGIBLE_CACHE_SIZE:
                self._eligible.clear()  # many distinct constraint sets between node changes: start over
            hit = self._eligible[key] = [n for n in self._all_sorted() if _fits(n, static)]
        return hit

    def _fit_preassigned(self, t: Task, out: list[Decision]) -> None:
        # global-service tasks come with their node: only check that it can take them
        p = self._pipeline
        p.set_task(t)
        ni = self.nodes.get(t.node_id)
        if ni is None:
            out.append(Decision(t.id, None, NO_SUITABLE_NODE))
        elif p.process(ni):
            ni.place(t)
            self._task_node[t.id] = ni.id
            out.append(Decision(t.id, ni.id, ASSIGNED_MESSAGE))
        else:
            out.append(Decision(t.id, None, p.explain()))

    def _schedule_group(self, group: list[Task], now: float, out: list[Decision]) -> None:
        t0 = group[0]
        p = self._pipeline
        p.set_task(t0)
        eligible = self._eligible_nodes(t0, p.checks(static=True))
        dynamic = p.checks(static=False)
        make_picker = self._picker_factory(t0, now, eligible, dynamic)
        run = _GroupRun(self, group, make_picker, out)

        prefs = [g for g in (_pref_getter(d) for d in (t0.spec.placement.preferences
                                                         if t0.spec.placement else ())) if g is not None]
        if prefs:
            run.fill(self._tree(t0.service_id, prefs, eligible), len(group))
        else:
            leaf = _Branch()
            leaf.nodes = eligible
            run.fill_leaf(leaf, len(group))

        if run.next < len(group):
            p.set_task(t0)
            for n in self._all_sorted():
                p.process(n)
            msg = p.explain()
            out.extend(Decision(t.id, None, msg) for t in group[run.next:])

    def _picker_factory(self, t0: Task, now: float, eligible: list[NodeInfo],
                        dynamic: list[_Check]) -> Callable[[list[NodeInfo]], _Picker]:
        strategy = self.strategy_for(t0)
        if strategy == "random":
            rng = self.rng
            return lambda nodes: _RandomPicker(nodes, rng, dynamic)
        if strategy == "binpack":
            return _binpack_picker(dynamic)
        # spread: a node where this service version keeps failing goes last (swarmkit's maxFailures rule)
        penalty: dict[str, int] = {}
        for n in eligible:
            if n.failures:
                f = n.recent_failures(t0.service_id, t0.spec_version, now)
                if f >= MAX_FAILURES:
                    penalty[n.id] = f
        return _spread_picker(t0.service_id, penalty, dynamic)

    def _tree(self, service_id: str, prefs: Iterable[Callable[[Node], str]],
              eligible: list[NodeInfo]) -> _Branch:
        # every node shapes the tree and counts its tasks, eligible or not, so a branch whose nodes are
        # all ineligible still claims its share and the shares of the others stay as they would be
        prefs = list(prefs)
        ok = {id(n) for n in eligible}
        root = _Branch()
        for ni in self._all_sorted():
            count = ni.active_by_service.get(service_id, 0)
            b = root
            for get in prefs:
                b.tasks += count
                if b.children is None:
                    b.children = {}
                value = get(ni.node)
                nxt = b.children.get(value)
                if nxt is None:
                    nxt = b.children[value] = _Branch()
                b = nxt
            b.tasks += count
            if id(ni) in ok:
                b.nodes.append(ni)
        return root
