"""Times `Scheduler.schedule` alone: N pending tasks onto M nodes, with and without a constraint.

Run: python bench/scheduler_core.py [--quick]. Prints tasks/s per case; `run(quick)` returns the records
for bench/run. Tasks come in services of 1,000 replicas with small reservations, so both the per-group
work (filters, eligibility, heap build) and the per-task work are measured. The constraint leaves a third
of the nodes eligible.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal.manager.scheduler.core import Scheduler
from shoal.model.objects import (
    Annotations,
    Node,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    Placement,
    ResourceRequirements,
    Resources,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.model.state import TaskState

SERVICE_SIZE = 1000
CONSTRAINT = "node.labels.tier==front"


def _nodes(m: int) -> list[Node]:
    return [
        Node(
            id=f"node{i:06d}",
            spec=NodeSpec(annotations=Annotations(labels={"tier": ("front", "mid", "back")[i % 3]})),
            description=NodeDescription(
                hostname=f"host{i}",
                resources=Resources(nano_cpus=10**12, memory_bytes=1 << 50),
            ),
            status=NodeStatus(state="ready", addr="10.0.0.1"),
        )
        for i in range(m)
    ]


def _tasks(n: int, constrained: bool) -> list[Task]:
    out: list[Task] = []
    placement = Placement(constraints=(CONSTRAINT,)) if constrained else None
    res = ResourceRequirements(reservations=Resources(nano_cpus=10_000_000, memory_bytes=1 << 20))
    for s in range(0, n, SERVICE_SIZE):
        spec = TaskSpec(resources=res, placement=placement)
        for i in range(s, min(n, s + SERVICE_SIZE)):
            out.append(Task(id=f"task{i:07d}", service_id=f"svc{s // SERVICE_SIZE}", spec_version=1,
                            spec=spec,
                            slot=i - s + 1, status=TaskStatus(state=TaskState.PENDING)))
    return out


def _case(n_tasks: int, n_nodes: int, constrained: bool) -> dict[str, object]:
    sched = Scheduler(random.Random(1))
    for node in _nodes(n_nodes):
        sched.upsert_node(node)
    tasks = _tasks(n_tasks, constrained)
    t0 = time.perf_counter()
    decisions = sched.schedule(tasks, now=0.0)
    elapsed = time.perf_counter() - t0
    placed = sum(1 for d in decisions if d.node_id is not None)
    if placed != n_tasks:
        raise AssertionError(f"only {placed} of {n_tasks} tasks placed")
    name = f"{n_tasks}_tasks_{n_nodes}_nodes" + ("_constrained" if constrained else "")
    return {"benchmark": "scheduler", "case": name, "metric": "tasks_per_s", "value": n_tasks / elapsed,
            "unit": "tasks/s"}


def run(quick: bool) -> list[dict[str, object]]:
    sizes = [(1_000, 1_000), (10_000, 1_000)]
    if not quick:
        sizes += [(100_000, 1_000), (100_000, 10_000)]
    return [_case(n, m, c) for n, m in sizes for c in (False, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for r in run(args.quick):
        print(f"{r['case']:<40} {r['value']:>12,.0f} {r['unit']}")


if __name__ == "__main__":
    main()
