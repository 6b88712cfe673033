"""Issue 15 §2/§5 on real processes: the leader does not keep what it sent a lagging follower in memory.

A follower is stopped while 80 MiB of configs are written through the leader (past the snapshot-by-size
threshold, so the leader compacts and the follower needs a snapshot), restarted until it has caught up, and
the configs are deleted. The leader's resident set afterwards is bounded by what the design keeps in memory:
the log since the last snapshot (under DEFAULT_SNAPSHOT_BYTES, the size that triggers the next one) and the
catch-up tail below it (DEFAULT_CATCHUP_BYTES), over what it used before the writes. The snapshot it sent
(the whole store, larger than both) is not kept: before the fix the sender's stream held it (186 MiB here
against a 145 MiB bound; 765 MiB in the soak of the issue).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.manager.raft import DEFAULT_CATCHUP_BYTES, DEFAULT_SNAPSHOT_BYTES
from tests.cluster.conftest import _require_cli
from tests.support.managers import ManagerCluster
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("managers")]

CONFIG = 400 << 10
COUNT = 200  # 80 MiB: the snapshot is past DEFAULT_SNAPSHOT_BYTES + DEFAULT_CATCHUP_BYTES
NOISE = 24 << 20  # allocator slack, gRPC buffers, the store's indexes


@pytest.fixture
def three(tmp_path: Path) -> Iterator[ManagerCluster]:
    _require_cli()
    with ManagerCluster(tmp_path, 3) as mc:
        yield mc


def rss(n: ShoalNode) -> int:
    assert n.proc is not None
    for line in Path(f"/proc/{n.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


def test_the_leader_drops_what_it_sent_a_restarted_follower(three: ManagerCluster) -> None:
    mc = three
    lead = mc.leader()
    lag = next(n for n in reversed(mc.nodes) if n is not lead)
    wait_until(lambda: mc.raft(lag).get("applied") == mc.raft(lead)["commit"], 20, what="the follower level")
    start = rss(lead)
    lag.terminate()
    data = base64.b64encode(os.urandom(CONFIG * 3 // 4)).decode()
    ids = []
    for i in range(COUNT):
        status, body = lead.api("POST", "/v1.47/configs/create", json.dumps({"Name": f"c{i}", "Data": data}).encode())
        assert status == 201, body
        ids.append(body["ID"])
    wait_until(lambda: mc.raft(lead)["first_index"] > mc.raft(lead)["commit"] - COUNT, 30,
               what="the leader to compact past the stopped follower")
    lag.start()
    target = mc.raft(lead)["commit"]
    wait_until(lambda: mc.raft(lag).get("applied", 0) >= target, 40, what="the follower to catch up")
    for cid in ids:
        status, body = lead.api("DELETE", f"/v1.47/configs/{cid}")
        assert status == 204, body
    target = mc.raft(lead)["commit"]
    wait_until(lambda: all(mc.raft(n).get("applied", 0) >= target for n in mc.live()), 20, what="all applied")
    bound = start + DEFAULT_SNAPSHOT_BYTES + DEFAULT_CATCHUP_BYTES + NOISE
    wait_until(lambda: rss(lead) <= bound, 20,
               what=f"leader RSS {rss(lead) >> 20} MiB within {bound >> 20} MiB (started at {start >> 20} MiB)")
