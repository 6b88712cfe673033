"""The Raft log only takes what every manager can replay, and a manager that meets an entry it cannot apply stops
loudly; `shoal raft check|repair` is the way out for a log that already holds one (real daemons on loopback).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal.manager.logrepair import APPLY_FAILED_EXIT, open_storage
from shoal.manager.raft.core import Entry, EntryType, HardState
from shoal.model.codec import encode
from shoal.model.objects import Annotations, Service, ServiceSpec
from shoal.store.memory import ENTRY_FORMAT, MAX_OBJECT_BYTES
from tests.support.managers import ManagerCluster, free_port
from tests.support.shoal_node import NodeError, ShoalNode
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

NAN_SERVICE = (b'{"Name":"nan","TaskTemplate":{"ContainerSpec":{"Image":"busybox","Command":["sleep","100"]}},'
               b'"UpdateConfig":{"MaxFailureRatio":NaN}}')


def service(name: str, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Command": ["sleep", "100"]}},
            **extra}


def shoal_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True, timeout=60)


def write_bad_entry(data_dir: Path) -> int:
    """Append to a stopped manager's log, committed, the entry an older Shoal wrote for a service created with
    MaxFailureRatio NaN (orjson wrote the NaN as null). Returns its index."""
    raw = encode(Service(id="badsvc", spec=ServiceSpec(annotations=Annotations(name="bad"))))
    raw["spec"]["update_config"] = {"max_failure_ratio": None}
    data = json.dumps({"format": ENTRY_FORMAT, "version": 1000,
                       "actions": [{"op": "create", "kind": "service", "obj": raw}]}).encode()
    storage = open_storage(data_dir)
    try:
        hs = storage.load().hard_state
        index = storage.last_index() + 1
        storage.append([Entry(index, hs.term, EntryType.NORMAL, data)])
        storage.set_hard_state(HardState(hs.term, hs.vote, index))
        storage.sync()
    finally:
        storage.close()
    return index


def service_names(node: ShoalNode) -> list[str]:
    status, body = node.api("GET", "/v1.47/services")
    assert status == 200, body
    return sorted(s["Spec"]["Name"] for s in body)


def test_a_manager_that_cannot_apply_an_entry_exits_and_the_log_can_be_repaired(tmp_path: Path) -> None:
    node = ShoalNode(tmp_path / "m", hostname="m").start()
    try:
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        assert node.api("POST", "/v1.47/services/create", json.dumps(service("good")).encode())[0] == 201
        node.terminate()
        index = write_bad_entry(node.data_dir)

        with pytest.raises(NodeError) as e:
            node.start()
        assert f"exited with {APPLY_FAILED_EXIT}" in str(e.value)
        assert f"cannot apply Raft log entry {index}:" in node.log_path.read_text()
        node.proc = None

        check = shoal_cli("raft", "check", "--data-dir", str(node.data_dir))
        assert check.returncode == 1, check
        assert f"entry {index}: service badsvc: TypeError" in check.stdout
        repair = shoal_cli("raft", "repair", "--data-dir", str(node.data_dir), "--index", str(index))
        assert repair.returncode == 0, repair
        assert f"dropped from entry {index}: service badsvc" in repair.stdout
        assert shoal_cli("raft", "check", "--data-dir", str(node.data_dir)).returncode == 0

        node.start()
        assert service_names(node) == ["good"]
        assert node.api("POST", "/v1.47/services/create", json.dumps(service("later")).encode())[0] == 201
        assert service_names(node) == ["good", "later"]
    finally:
        node.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with ManagerCluster(tmp_path_factory.mktemp("log-safety"), 3) as mc:
        yield mc


def followers(mc: ManagerCluster) -> list[ShoalNode]:
    lead = mc.leader()
    return [n for n in mc.live() if n is not lead]


def every_manager_has(mc: ManagerCluster, name: str) -> None:
    def have() -> bool:
        return all(name in service_names(n) for n in mc.live())

    wait_until(have, 30, what=f"service {name} on every manager")


def test_nan_through_a_follower_is_refused_and_the_swarm_stays_whole(cluster: ManagerCluster) -> None:
    for via in (followers(cluster)[0], cluster.leader()):
        status, body = via.api("POST", "/v1.47/services/create", NAN_SERVICE)
        assert (status, body) == (400, {"message": "invalid JSON: invalid character 'N' looking for beginning "
                                                   "of value"})
    status, body = followers(cluster)[1].api("POST", "/v1.47/services/create",
                                             json.dumps(service("after-nan")).encode())
    assert status == 201 and body["ID"], body
    every_manager_has(cluster, "after-nan")
    restarted = followers(cluster)[0]
    restarted.restart()
    every_manager_has(cluster, "after-nan")
    assert all(n.proc is not None and n.proc.poll() is None for n in cluster.nodes)


def test_a_follower_forwards_the_largest_body_and_the_leader_judges_it(cluster: ManagerCluster) -> None:
    from shoal.engineapi.server import MAX_BODY_BYTES

    via = followers(cluster)[0]
    # The largest body the API reads (whitespace makes up the rest): more than gRPC's default 4 MiB message.
    label = "x" * (MAX_OBJECT_BYTES // 2)
    body = json.dumps(service("big", Labels={"l": label})).encode()
    body = body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"
    assert len(body) == MAX_BODY_BYTES
    status, answer = via.api("POST", "/v1.47/services/create", body)
    assert status == 201 and answer["ID"], answer
    every_manager_has(cluster, "big")

    too_big = json.dumps(service("too-big", Labels={"l": "x" * (MAX_OBJECT_BYTES + 1)})).encode()
    status, answer = via.api("POST", "/v1.47/services/create", too_big)
    assert status == 400 and "too large for the cluster store" in answer["message"], answer
    status, answer = via.api("POST", "/v1.47/services/create", body + b" ")
    assert status == 413, answer
    assert "too-big" not in service_names(cluster.leader())


def test_a_huge_body_to_a_follower_is_refused_without_disturbing_the_leader(cluster: ManagerCluster) -> None:
    lead = cluster.leader()
    term = cluster.raft(lead)["term"]
    body = json.dumps(service("huge", Labels={"l": "x" * (40 * 1024 * 1024)})).encode()
    status, answer = followers(cluster)[0].api("POST", "/v1.47/services/create", body)
    assert status == 413 and "request body is larger than" in answer["message"], answer
    assert cluster.leader() is lead and cluster.raft(lead)["term"] == term  # no election


def test_writes_relayed_while_the_leader_dies_answer_whole_or_fail(cluster: ManagerCluster) -> None:
    """Every answer a follower relays while the leader is killed is a 201 with the new ID or an error with a
    message, never a status with an empty body. (Last in the module: it kills the leader.)"""
    import threading

    lead = cluster.leader()
    via = followers(cluster)[0]
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            try:
                answers.append(via.api("POST", "/v1.47/configs/create",
                                       json.dumps({"Name": f"relay-{i}", "Data": "eA=="}).encode()))
            except OSError as e:
                answers.append((0, repr(e)))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_until(lambda: len(answers) >= 20, 30, what="writes through the follower")
        lead.kill9()
        n = len(answers)
        wait_until(lambda: any(st == 201 for st, _ in answers[n:]), 30, what="a write after the failover")
    finally:
        stop.set()
        t.join(60)
    for status, body in answers:
        if status == 201:
            assert isinstance(body, dict) and body.get("ID"), (status, body)
        else:
            assert isinstance(body, dict) and body.get("message"), (status, body)
