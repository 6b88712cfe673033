"""Issue 15 §2 on real processes: a manager stopped while the others take writes comes back on its data dir and
catches up, without any new write, and `docker node ls` shows it Reachable only once it follows.

The scenario of the issue: three managers; the third stopped with SIGTERM once level with the leader; 250
configs of 2 KB (and some of 300 KiB) created through the first; the third restarted. Before the fix it stayed
at its old index for ever (the leader re-sent its probe at every heartbeat answer and the copies, written as
one gRPC message, passed the receiver's limit; 300 KiB entries passed it in any batch).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import _require_cli
from tests.support.managers import ManagerCluster
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

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


def test_a_manager_a_few_entries_behind_a_snapshot_catches_up_from_the_tail(three: ManagerCluster) -> None:
    # The log keeps LogEntriesForSlowFollowers entries (500 by default) below each snapshot: a manager 100 writes
    # behind, past two snapshots, gets those entries, not a snapshot (which may be tens of MiB).
    mc = three
    mc.leader().docker("swarm", "update", "--snapshot-interval", "40")
    lead, m3, old = stop_level_then_write(mc, 100, 0)
    wait_until(lambda: mc.raft(lead)["snapshot_index"] > old + 40, 20, what="the leader to snapshot past m3's index")
    assert mc.raft(lead)["first_index"] <= old + 1
    target = mc.raft(lead)["commit"]
    m3.start()
    wait_until(lambda: mc.raft(m3).get("applied", 0) >= target, 30, what=f"m3 to catch up from {old} to {target}")
    st = mc.raft(m3)
    assert st["snapshots_installed"] == 0, st
    assert st["objects"]["config"] == 100


def test_a_manager_behind_the_compacted_log_gets_a_snapshot(three: ManagerCluster) -> None:
    mc = three
    mc.leader().docker("swarm", "update", "--snapshot-interval", "50")
    mc.set_log_entries_for_slow_followers(10)  # m3 will be 150 writes behind: behind the tail too
    lead, m3, old = stop_level_then_write(mc, 150, 0)
    wait_until(lambda: mc.raft(lead)["snapshot_index"] > old, 20, what="the leader to compact past m3's index")
    target = mc.raft(lead)["commit"]
    m3.start()
    wait_until(lambda: mc.raft(m3).get("applied", 0) >= target, 30, what=f"m3 to catch up from {old} to {target}")
    st = mc.raft(m3)
    assert st["snapshots_installed"] >= 1, st
    assert st["objects"]["config"] == 150
    wait_until(lambda: mc.manager_status(lead)[m3.hostname] == "Reachable", 10, what="m3 Reachable")


def fill(path: Path) -> None:
    """Write `path` until the filesystem is full."""
    block = b"\0" * (64 << 10)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


@pytest.fixture(params=["m3", "m1"], ids=["follower", "leader"])
def one_on_tmpfs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[ManagerCluster, str, Path]]:
    """Three managers, one of them (m1 inits the swarm and leads; m3 follows) with its data dir on a 20 MiB tmpfs."""
    _require_cli()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    name = str(request.param)
    data = tmp_path / name / "data"
    data.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(data)], check=True)
    try:
        with ManagerCluster(tmp_path, 3) as mc:
            yield mc, name, data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def create_retrying(mc: ManagerCluster, order: list[ShoalNode], name: str, data: bytes) -> None:
    """Create a config through `order`, retrying while a new leader is elected (the full one may have led)."""
    body = {"Name": name, "Data": base64.b64encode(data).decode()}
    last: object = None

    def done() -> bool:
        nonlocal last
        status, last, _ = mc.api_any("POST", "/v1.47/configs/create", body, order=order)
        return status == 201 or (status == 409 and name in str(last))  # 409: an earlier try committed

    wait_until(done, 20, interval=0.2, what=f"config {name} created; last answer {last!r}")


def test_a_manager_whose_disk_fills_exits_nonzero_and_catches_up_when_restarted(
        one_on_tmpfs: tuple[ManagerCluster, str, Path]) -> None:
    mc, name, data = one_on_tmpfs
    full = next(n for n in mc.nodes if n.hostname == name)
    others = [n for n in mc.nodes if n is not full]
    filler = data / "filler"
    fill(filler)
    assert full.proc is not None
    written = 0
    while full.proc.poll() is None:  # the others go on taking writes; the full one fails to store them
        assert written < 60, f"{name} still running after {written} writes to a full disk:\n{full.log_tail()}"
        create_retrying(mc, others, f"full{written}", os.urandom(96 << 10))
        written += 1
    assert full.proc.returncode == 1, full.log_tail()  # exited non-zero: a supervisor restarts it
    assert "Raft storage failed" in full.log_tail(200)
    for i in range(5):  # the swarm keeps working without it
        create_retrying(mc, others, f"after{i}", b"x")

    filler.unlink()  # space returns; the supervisor (here, the test) starts it again
    full.proc = None
    full.start()
    lead = mc.leader(among=others)
    target = mc.raft(lead)["commit"]
    wait_until(lambda: mc.raft(full).get("applied", 0) >= target, 30, what=f"{name} to catch up after its disk filled")
    assert mc.raft(full)["objects"]["config"] == written + 5
    wait_until(lambda: mc.manager_status(lead)[name] == "Reachable", 10, what=f"{name} Reachable")
