"""Drain, rebalancing and autoscaling with the docker executor (a manager and a worker on one private dockerd,
driven by the stock CLI): the same behaviour the process-executor tests check, with containers."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.test_two_nodes_docker import Pair, pair  # noqa: F401  (the fixture)
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _tasks(p: Pair, service: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in p.mgr.docker(
        "service", "ps", "--no-trunc", "--format", "{{json .}}", service).stdout.splitlines() if line.strip()]


def _inspect_tasks(p: Pair, service: str) -> list[dict[str, Any]]:
    ids = [t["ID"] for t in _tasks(p, service)]
    return list(json.loads(p.mgr.docker("inspect", *ids).stdout)) if ids else []


def _ts(raw: str) -> datetime:
    return datetime.fromisoformat(raw[:26].rstrip("Z") + "+00:00" if "." in raw else raw.replace("Z", "+00:00"))


def _replicas(p: Pair, service: str) -> int:
    spec = json.loads(p.mgr.docker("service", "inspect", service).stdout)[0]["Spec"]
    return int(spec["Mode"]["Replicated"]["Replicas"])


def test_drain_rebalance_and_autoscale_with_containers(pair: Pair, test_image: str) -> None:  # noqa: F811
    m, ids = pair.mgr, pair.ids
    # A drain that keeps services up: start-first, one replica per node; the worker is drained.
    sf = m.docker("service", "create", "-d", "--no-resolve-image", "--name", "sf", "--replicas", "2",
                  "--update-order", "start-first", "--stop-grace-period", "1s", test_image, "sleep", "600"
                  ).stdout.strip()
    wait_until(lambda: pair.running_nodes(sf) == sorted(ids.values()), 60, what="sf on both nodes")
    m.docker("node", "update", "--availability", "drain", "wrk2")
    wait_until(lambda: pair.running_nodes(sf) == [ids["mgr"]] * 2, 60, what="sf moved to the manager")
    tasks = _inspect_tasks(pair, "sf")
    (moved,) = [t for t in tasks if t.get("Spec") and (t.get("Labels") or {}).get("com.shoal.move") == "drain"]
    old = next(t for t in tasks if t["ID"] == moved["Labels"]["com.shoal.drain.replaces"])
    wait_until(lambda: next(t for t in _inspect_tasks(pair, "sf") if t["ID"] == old["ID"])["Status"]["State"]
               == "shutdown", 30, what="the drained container stopped")
    old = next(t for t in _inspect_tasks(pair, "sf") if t["ID"] == old["ID"])
    assert _ts(moved["Status"]["Timestamp"]) <= _ts(old["Status"]["Timestamp"])  # running before the old stopped

    # Rebalancing: the worker comes back to active and gets its share of a labelled service (a node settles 2 s).
    client = m.client()
    try:
        sw = client.api.inspect_swarm()
        client.api.update_swarm(version=sw["Version"]["Index"], swarm_spec={
            **sw["Spec"], "Labels": {**(sw["Spec"].get("Labels") or {}), "com.shoal.rebalance.settle": "2s"}})
    finally:
        client.close()
    m.docker("service", "create", "-d", "--no-resolve-image", "--name", "rb", "--replicas", "4",
             "--update-order", "start-first", "--label", "com.shoal.rebalance=true", "--stop-grace-period", "1s",
             test_image, "sleep", "600")
    rb = json.loads(m.docker("service", "inspect", "rb").stdout)[0]["ID"]
    wait_until(lambda: pair.running_nodes(rb) == [ids["mgr"]] * 4, 60, what="rb on the manager")
    m.docker("node", "update", "--availability", "active", "wrk2")
    t0 = time.monotonic()
    wait_until(lambda: pair.running_nodes(rb) == sorted([ids["mgr"]] * 2 + [ids["wrk"]] * 2), 120,
               what="rb rebalanced onto the worker")
    rebalanced = time.monotonic() - t0

    # Autoscaling: a busy loop held to a quarter core (the engine's CFS quota) with a 0.1-core reservation goes
    # to its max, then back when idle.
    m.docker("service", "create", "-d", "--no-resolve-image", "--name", "hot", "--reserve-cpu", "0.1",
             "--limit-cpu", "0.25", "--label", "com.shoal.autoscale.max=2", "--label", "com.shoal.autoscale.cpu=50",
             "--label", "com.shoal.autoscale.down-window=0s", "--stop-grace-period", "1s",
             test_image, "sh", "-c", "while :; do :; done")
    t1 = time.monotonic()
    wait_until(lambda: _replicas(pair, "hot") == 2, 120, interval=1, what="hot scaled to 2")
    up = time.monotonic() - t1
    m.docker("service", "update", "-d", "--args", "sleep 600", "hot")
    t2 = time.monotonic()
    wait_until(lambda: _replicas(pair, "hot") == 1, 180, interval=1, what="hot back to 1")
    down = time.monotonic() - t2
    print(f"docker executor: rebalanced in {rebalanced:.0f} s (2 s settle); autoscaled 1 -> 2 in "
          f"{up:.0f} s, 2 -> 1 in {down:.0f} s after going idle")
