"""Issue 15 §2 on real processes: a manager stopped while the others take writes comes back on its data dir and
catches up, without any new write, and `docker node ls` shows it Reachable only once it follows.

The scenario of the issue: three managers; the third stopped with SIGTERM once level with the leader; 250
configs of 2 KB (and some of 300 KiB) created through the first; the third restarted. Before the fix it stayed
at its old index for ever (the leader re-sent its probe at every heartbeat answer and the copies, written as
one gRPC message, passed the receiver's limit; 300 KiB entries passed it in any batch).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import _require_cli
from tests.support.managers import ManagerCluster
from tests.support.shoal_node import ShoalNode, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("managers")]


@pytest.fixture
def three(tmp_path: Path) -> Iterator[ManagerCluster]:
    _require_cli()
    with ManagerCluster(tmp_path, 3) as mc:
        yield mc


def create(n: ShoalNode, name: str, size: int) -> None:
    data = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    status, body = n.api("POST", "/v1.47/configs/create", json.dumps({"Name": name, "Data": data}).encode())
    assert status == 201, body


def stop_level_then_write(mc: ManagerCluster, small: int, large: int) -> tuple[ShoalNode, ShoalNode, int]:
    lead = mc.leader()
    m3 = next(n for n in reversed(mc.nodes) if n is not lead)
    wait_until(lambda: mc.raft(m3).get("applied") == mc.raft(lead)["commit"], 20, what="m3 level with the leader")
    old = mc.raft(m3)["applied"]
    m3.terminate()  # SIGTERM
    for i in range(small):
        create(lead, f"small{i}", 2048)
    for i in range(large):
        create(lead, f"large{i}", 300 << 10)
    return lead, m3, old


def test_a_restarted_manager_catches_up_without_new_writes_and_then_follows(three: ManagerCluster) -> None:
    mc = three
    lead, m3, old = stop_level_then_write(mc, 250, 20)
    target = mc.raft(lead)["commit"]
    m3.start()  # on its data dir; nothing is written from here until it has caught up
    wait_until(lambda: mc.raft(m3).get("applied", 0) >= target, 30,
               what=f"m3 to catch up from {old} to {target}")
    assert mc.raft(m3)["objects"]["config"] == 270
    wait_until(lambda: mc.manager_status(lead)[m3.hostname] == "Reachable", 10, what="m3 Reachable")
    # It receives later writes too (through the stock CLI, as in the issue).
    f = m3.workdir / "later.txt"
    f.write_text("later")
    lead.docker("config", "create", "later", str(f))
    wait_until(lambda: mc.raft(m3)["objects"]["config"] == 271, 10, what="the later write on m3")


def test_a_manager_behind_the_compacted_log_gets_a_snapshot(three: ManagerCluster) -> None:
    mc = three
    mc.leader().docker("swarm", "update", "--snapshot-interval", "50")
    lead, m3, old = stop_level_then_write(mc, 150, 0)
    wait_until(lambda: mc.raft(lead)["snapshot_index"] > old, 20, what="the leader to compact past m3's index")
    target = mc.raft(lead)["commit"]
    m3.start()
    wait_until(lambda: mc.raft(m3).get("applied", 0) >= target, 30, what=f"m3 to catch up from {old} to {target}")
    st = mc.raft(m3)
    assert st["snapshots_installed"] >= 1, st
    assert st["objects"]["config"] == 150
    wait_until(lambda: mc.manager_status(lead)[m3.hostname] == "Reachable", 10, what="m3 Reachable")
