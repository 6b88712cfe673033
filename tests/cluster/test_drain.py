"""Moving tasks, through the stock CLI on a manager and workers (process executor). A drain that keeps services
up: a start-first service's task on a drained node stops only after its replacement runs elsewhere; one that
cannot be placed elsewhere keeps running and its replacement says why. Rebalancing: a worker joining later gets
its share of a service labelled for it."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from shoal.manager.orchestrator.reconcile import LABEL_REPLACES
from tests.support.wait import wait_until
from tests.support.workers import SLEEP, Cluster


def _ts(t: dict[str, Any]) -> datetime:
    raw = str(t["Status"]["Timestamp"])
    return datetime.fromisoformat(raw[:26].rstrip("Z") + "+00:00" if "." in raw else raw.replace("Z", "+00:00"))


def test_start_first_drain_moves_each_task_before_stopping_it(cluster: Cluster) -> None:
    m = cluster.manager
    cluster.add_worker("w1")
    cluster.add_worker("w2")
    m.docker("service", "create", "--detach", "--name", "sf", "--replicas", "2", "--update-order", "start-first",
             "busybox", *SLEEP)
    m.docker("service", "create", "--detach", "--name", "pinned", "--update-order", "start-first",
             "--constraint", "node.hostname==w1", "busybox", *SLEEP)
    wait_until(lambda: cluster.placement("sf") == {"w1": 1, "w2": 1} and cluster.placement("pinned") == {"w1": 1},
               30, what="sf spread and pinned on w1")
    (old,) = [t for t in cluster.running("sf") if t["NodeID"] == cluster.node_id("w1")]
    (pinned,) = cluster.running("pinned")

    m.docker("node", "update", "--availability", "drain", "w1")
    wait_until(lambda: cluster.placement("sf") == {"w2": 2} and len(cluster.running("sf")) == 2, 30,
               what="sf moved off w1")
    (moved,) = [t for t in cluster.tasks("sf") if t.get("Labels", {}).get(LABEL_REPLACES) == old["ID"]]
    wait_until(lambda: next(t for t in cluster.tasks("sf") if t["ID"] == old["ID"])["Status"]["State"] == "shutdown",
               30, what="the drained task shut down")
    gone = next(t for t in cluster.tasks("sf") if t["ID"] == old["ID"])
    # Its replacement was running (its status timestamp is when it started) before the old one stopped.
    assert moved["Status"]["State"] == "running" and _ts(moved) <= _ts(gone), (moved["Status"], gone["Status"])

    # Nowhere else to go: the pinned task keeps running on the drained node, its replacement says why.
    def waiting() -> list[dict[str, Any]]:
        return [t for t in cluster.tasks("pinned") if t.get("Labels", {}).get(LABEL_REPLACES) == pinned["ID"]
                and t["Status"]["State"] == "pending" and t["Status"].get("Err")]

    wait_until(lambda: bool(waiting()), 30, what="the pinned task's replacement pending")
    assert "no suitable node" in waiting()[0]["Status"]["Err"], waiting()[0]["Status"]
    assert [t["ID"] for t in cluster.running("pinned")] == [pinned["ID"]]
    ps = m.docker("service", "ps", "--no-trunc", "pinned").stdout
    assert "no suitable node" in ps, ps

    # Active again: the move that began completes there, one task in the end.
    m.docker("node", "update", "--availability", "active", "w1")
    wait_until(lambda: [t["ID"] for t in cluster.running("pinned")] not in ([], [pinned["ID"]])
               and len(cluster.running("pinned")) == 1, 30, what="the pinned move completed")


def test_rebalance_gives_a_joining_worker_its_share(cluster: Cluster) -> None:
    """`com.shoal.rebalance=true` on a service (stock CLI label): a worker joining later gets its share, moved
    start-first, one at a time; a service without the label stays where it is."""
    m = cluster.manager
    cluster.add_worker("w1")
    cluster.add_worker("w2")
    _status, swarm = m.api("GET", "/v1.47/swarm")
    spec = swarm["Spec"]
    spec["Labels"] = {**(spec.get("Labels") or {}), "com.shoal.rebalance.settle": "2s"}
    status, answer = m.api("POST", f"/v1.47/swarm/update?version={swarm['Version']['Index']}",
                           json.dumps(spec).encode())
    assert status == 200, answer
    m.docker("service", "create", "--detach", "--name", "rb", "--replicas", "6", "--update-order", "start-first",
             "--label", "com.shoal.rebalance=true", "busybox", *SLEEP)
    m.docker("service", "create", "--detach", "--name", "stay", "--replicas", "2", "busybox", *SLEEP)
    wait_until(lambda: cluster.placement("rb") == {"w1": 3, "w2": 3} and cluster.placement("stay") ==
               {"w1": 1, "w2": 1}, 30, what="rb and stay spread over w1 and w2")
    cluster.add_worker("w3")
    t0 = time.monotonic()
    wait_until(lambda: cluster.placement("rb") == {"w1": 2, "w2": 2, "w3": 2}
               and len(cluster.running("rb")) == 6, 60, what="rb rebalanced onto w3")
    print(f"rebalance (process executor): 3/3 -> 2/2/2 {time.monotonic() - t0:.1f} s after w3 joined (2 s settle)")
    moved = [t for t in cluster.tasks("rb") if t.get("Labels", {}).get("com.shoal.move") == "rebalance"]
    assert len(moved) == 2 and {t["NodeID"] for t in moved} == {cluster.node_id("w3")}
    assert cluster.placement("stay") == {"w1": 1, "w2": 1}
