"""Scheduler throughput: the pure scheduler (bench/scheduler_core.py) and the whole one-manager path
(bench/manager_path.py: store transaction, sqlite log with fsync, watch, dispatcher assignment), printed
beside published anchors from other orchestrators. The anchors were measured on other hardware and with
other workloads: they are orders of magnitude to read a figure against, not a side-by-side run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import manager_path, scheduler_core
from bench.common import conditions, record

SWARMKIT = ("SwarmKit scheduler benchmark, 1k nodes (published 4,400-5,600 tasks/s; midpoint)", 5000.0)
ANCHORS = [
    ("Kubernetes scheduler_perf floor, 5k nodes (published)", 680.0),
    ("Nomad C1M, whole cluster (published)", 3750.0),
    ("Nomad C2M, whole cluster (published ~1,500/s)", 1500.0),
]


def run(quick: bool) -> list[dict[str, Any]]:
    cond = ("simulated nodes with ample resources; services of 1,000 replicas; constraint "
            "node.labels.tier==front leaves 1/3 of nodes eligible; manager path: 1 manager, fsync on")
    conditions("scheduler", cond)
    out: list[dict[str, Any]] = []
    raw = [dict(r, case="scheduler alone: " + str(r["case"]).replace("_", " ")) for r in scheduler_core.run(quick)]
    raw += manager_path.run(quick)
    for r in raw:
        out.append(record("scheduler", str(r["case"]), str(r["metric"]), float(r["value"]), str(r["unit"]),
                          reference=SWARMKIT[0], reference_value=SWARMKIT[1], conditions=cond))
    # the headline figure, the whole manager path at its largest case, against each other anchor
    mp = [r for r in out if r["case"].startswith("manager path") and "eligible" not in r["case"]]
    if mp:
        head = mp[-1]
        for name, value in ANCHORS:
            out.append(record("scheduler", f"{head['case']} vs anchor", "tasks_per_s", head["value"], "tasks/s",
                              reference=name, reference_value=value, conditions=cond))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=1))
