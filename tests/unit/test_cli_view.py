"""What `shoal status`, `top` and `diagnose` make of the Engine API's JSON: the summaries (Raft health, converging
services, unplaceable tasks, node reservations), the drawn screen, and the bundle's redaction."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from rich.console import Console

from shoal.ctl import diagnose as D
from shoal.ctl import view
from shoal.ctl.follow import template_key

GIB = 1024 ** 3


def node(nid: str, host: str, *, manager: str | None = None, leader: bool = False, state: str = "ready",
         availability: str = "active") -> dict[str, Any]:
    n: dict[str, Any] = {"ID": nid, "Description": {"Hostname": host, "Resources": {"NanoCPUs": 4 * 10**9,
                                                                                   "MemoryBytes": 8 * GIB}},
                         "Status": {"State": state}, "Spec": {"Availability": availability, "Role": "worker"}}
    if manager:
        n["ManagerStatus"] = {"Reachability": manager, "Leader": leader, "Addr": "127.0.0.1:2377"}
    return n


def service(sid: str, name: str, replicas: int, running: int, update: str = "", message: str = "") -> dict[str, Any]:
    s: dict[str, Any] = {"ID": sid, "Spec": {"Name": name, "Mode": {"Replicated": {"Replicas": replicas}},
                                             "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest@sha256:ab"}}},
                         "ServiceStatus": {"RunningTasks": running, "DesiredTasks": replicas}}
    if update:
        s["UpdateStatus"] = {"State": update, "Message": message}
    return s


def task(sid: str, nid: str, state: str, desired: str = "running", err: str = "", ts: str = "2026-01-01T00:00:00Z",
         cpus: float = 0, mem: int = 0, slot: int = 1) -> dict[str, Any]:
    return {"ID": f"t{sid}{slot}{state}", "ServiceID": sid, "NodeID": nid, "Slot": slot, "DesiredState": desired,
            "Status": {"State": state, "Err": err, "Timestamp": ts},
            "Spec": {"Resources": {"Reservations": {"NanoCPUs": int(cpus * 1e9), "MemoryBytes": mem}}}}


NO_NODE = "no suitable node (insufficient resources on 3 nodes)"


def snapshot() -> view.Snapshot:
    nodes = [node("m1", "mgr1", manager="reachable", leader=True), node("m2", "mgr2", manager="reachable"),
             node("m3", "mgr3", manager="unreachable", state="down"), node("w1", "wrk1"),
             node("w2", "wrk2", availability="drain")]
    services = [service("s1", "web", 3, 3), service("s2", "big", 2, 0), service("s3", "api", 2, 1, "updating"),
                service("s4", "db", 1, 1, "paused", "update paused due to failure or early termination of task x")]
    tasks = [task("s1", "w1", "running", cpus=0.5, mem=GIB, slot=1), task("s1", "w1", "running", cpus=0.5, slot=2),
             task("s1", "m1", "running", slot=3),
             task("s2", "", "pending", err=NO_NODE, slot=1), task("s2", "", "pending", err=NO_NODE, slot=2,
                                                                   ts="2026-01-01T00:00:05Z"),
             task("s3", "w1", "running", slot=1), task("s3", "w1", "starting", slot=2),
             task("s4", "w1", "running", slot=1),
             task("s4", "w1", "failed", desired="shutdown", err="task: non-zero exit (1)",
                  ts="2026-01-01T00:01:00Z", slot=1),
             task("s4", "w1", "rejected", desired="shutdown", err="image not found", ts="2026-01-01T00:02:00Z",
                  slot=1)]
    return view.Snapshot("unix:///run/shoal.sock",
                         {"Name": "mgr1", "Swarm": {"NodeID": "m1", "LocalNodeState": "active",
                                                    "Cluster": {"ID": "c0ffee"}}},
                         {"Version": "0.1.0"}, nodes, services, tasks,
                         {"role": "leader", "term": 4, "commit": 120, "applied": 118, "leader": 7,
                          "first_index": 1, "last_index": 120, "snapshot_index": 0, "voters": [7, 8, 9]},
                         taken_at=1_767_225_600.0)


def render(r: Any, width: int = 160) -> str:
    c = Console(width=width, file=io.StringIO(), color_system=None)
    with c.capture() as cap:
        c.print(r)
    return cap.get()


def test_raft_health_from_manager_status() -> None:
    h = view.raft_health(snapshot())
    assert (h.managers, h.reachable, h.quorum, h.leader, h.verdict) == (3, 2, 2, "mgr1", "degraded")
    snap = snapshot()
    snap.nodes[1]["ManagerStatus"]["Reachability"] = "unreachable"
    assert view.raft_health(snap).verdict == "no quorum"
    snap = snapshot()
    snap.nodes[2]["ManagerStatus"]["Reachability"] = "reachable"
    assert view.raft_health(snap).verdict == "healthy"
    snap.raft["leader"] = 0
    assert view.raft_health(snap).verdict == "no leader"
    assert view.raft_health(view.Snapshot("x", {}, {})).verdict == "not a manager"


def test_service_states() -> None:
    rows = {r.name: r for r in view.service_rows(snapshot())}
    assert [r.name for r in view.service_rows(snapshot())] == ["api", "big", "db", "web"]
    assert (rows["web"].state, rows["web"].running, rows["web"].desired, rows["web"].converged) == (
        "converged", 3, 3, True)
    assert (rows["big"].state, rows["big"].pending) == ("unplaceable", 2)
    assert rows["api"].state == "updating"
    assert rows["db"].state == "paused" and "early termination" in rows["db"].update_message
    assert rows["web"].image == "busybox:latest"  # the digest cut off, as docker service ls shows it


def test_service_with_a_task_still_starting_is_converging() -> None:
    snap = snapshot()
    snap.services = [service("s1", "web", 3, 3)]
    snap.tasks = [task("s1", "w1", "running", slot=i) for i in (1, 2, 3)] + [task("s1", "w1", "starting", slot=4)]
    assert view.service_rows(snap)[0].state == "converging"


def test_service_with_a_task_waiting_to_restart_is_converging() -> None:
    snap = snapshot()
    snap.services = [service("s1", "web", 2, 2)]
    snap.tasks = [task("s1", "w1", "running", slot=1), task("s1", "w1", "running", slot=2),
                  task("s1", "w1", "failed", desired="shutdown", slot=3, err="exit 1"),
                  task("s1", "w1", "ready", desired="ready", slot=3)]
    assert view.service_rows(snap)[0].state == "converging"


def test_unplaceable_groups_by_service_and_reason() -> None:
    un = view.unplaceable(snapshot())
    assert [(u.service, u.count, u.reason, u.since) for u in un] == [("big", 2, NO_NODE, "2026-01-01T00:00:00Z")]


def test_recent_failures_newest_first() -> None:
    f = view.recent_failures(snapshot())
    assert [(x.service, x.state, x.err) for x in f] == [("db", "rejected", "image not found"),
                                                        ("db", "failed", "task: non-zero exit (1)")]


def test_node_rows_count_tasks_and_reservations() -> None:
    rows = view.node_rows(snapshot())
    assert [(r.name, r.role) for r in rows] == [("mgr1", "leader"), ("mgr2", "reachable"), ("mgr3", "unreachable"),
                                                ("wrk1", "worker"), ("wrk2", "worker")]
    w1 = next(r for r in rows if r.name == "wrk1")
    # running: web x2, api x1, db x1; the starting api task reserves but does not count as running
    assert (w1.tasks, w1.cpus_reserved, w1.memory_reserved, w1.cpus, w1.memory) == (4, 1.0, GIB, 4.0, 8 * GIB)


def test_status_screen() -> None:
    out = render(view.status_view(snapshot()))
    assert "Raft: degraded; 2/3 managers reachable (quorum 2); leader mgr1" in out
    assert "this member: leader, term 4, commit 120, applied 118 (lag 2)" in out
    for line in (["mgr3", "unreachable", "down"], ["wrk1", "worker", " 4 ", "1/4", "1.0GiB/8.0GiB"],
                 ["wrk2", "worker", "ready", "drain"],
                 ["big", "replicated", "0/2", "busybox:latest", "unplaceable"],
                 ["db", "1/1", "paused: update paused due to failure"], ["big", "2", NO_NODE]):
        assert any(all(w in row for w in line) for row in out.splitlines()), (line, out)
    assert "4 services, 1 converged, 3 not" in out


def test_status_screen_without_swarm() -> None:
    snap = view.Snapshot("unix:///x.sock", {"Name": "n", "Swarm": {"LocalNodeState": "inactive"}}, {"Version": "1"},
                         error="This node is not a swarm manager.")
    out = render(view.status_view(snap))
    assert "swarm inactive" in out and "This node is not a swarm manager." in out


def test_top_screen_shows_events() -> None:
    ev = {"Type": "service", "Action": "update", "time": 1_767_225_600, "timeNano": 1,
          "Actor": {"ID": "s1", "Attributes": {"name": "web", "replicas.new": "5", "replicas.old": "3"}}}
    out = render(view.top_view(snapshot(), [ev], 2.0))
    assert "every 2s" in out and "service update web replicas=5" in out
    assert "none yet" in render(view.top_view(snapshot(), [], 2.0))


def test_template_key_ignores_what_task_specs_leave_out() -> None:
    svc = {"ContainerSpec": {"Image": "busybox:1", "Args": ["sleep", "1"], "StopGracePeriod": 10**10,
                             "Isolation": "default"}, "RestartPolicy": {"Condition": "any"}, "ForceUpdate": 0,
           "Resources": {"Limits": {}, "Reservations": {}}}
    tsk = {"ContainerSpec": {"Image": "busybox:1", "Args": ["sleep", "1"], "Isolation": "default"},
           "ForceUpdate": 0, "Resources": {"Limits": {}, "Reservations": {}}}
    assert template_key(svc) == template_key(tsk)
    assert template_key(svc) != template_key({**tsk, "ContainerSpec": {"Image": "busybox:2", "Args": ["sleep", "1"]}})
    assert template_key(svc) != template_key({**tsk, "ForceUpdate": 1})


# --- diagnose ------------------------------------------------------------------------------------------

TOKEN = "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx"
UNLOCK = "SWMKEY-1-7c37Cc8654o6p38HnroywCi19pllOnGtbdZEgtKxZu8"
PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBg0\n-----END EC PRIVATE KEY-----"


def test_redact_payloads_tokens_keys_env() -> None:
    swarm = {"ID": "x", "JoinTokens": {"Worker": TOKEN, "Manager": TOKEN},
             "Spec": {"CAConfig": {"SigningCAKey": PEM, "SigningCACert": "CERT"}}}
    r = D.redact(swarm)
    assert r["JoinTokens"] == D.REDACTED and r["Spec"]["CAConfig"] == {"SigningCAKey": D.REDACTED,
                                                                       "SigningCACert": "CERT"}
    secrets = [{"ID": "s", "Spec": {"Name": "pw", "Data": "c2VjcmV0", "Labels": {}}}]
    assert D.redact(secrets, payloads=True) == [{"ID": "s", "Spec": {"Name": "pw", "Data": D.REDACTED,
                                                                     "Labels": {}}}]
    svc = {"Spec": {"TaskTemplate": {"ContainerSpec": {"Env": ["DB_PASSWORD=hunter2", "EMPTY=", "BARE"]}}}}
    assert D.redact(svc)["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == [
        f"DB_PASSWORD={D.REDACTED}", f"EMPTY={D.REDACTED}", "BARE"]
    assert D.redact({"Data": "kept where payloads are not asked for"}) == {
        "Data": "kept where payloads are not asked for"}


def test_scrub_text() -> None:
    text = f"join with {TOKEN} then unlock {UNLOCK}\n{PEM}\nend"
    out = D.scrub(text)
    assert TOKEN not in out and UNLOCK not in out and "PRIVATE KEY" not in out and "MHcCAQEEIBg0" not in out
    assert out.endswith("\nend") and out.count(D.REDACTED) == 3


def test_write_tar_scrubs_every_file(tmp_path: Path) -> None:
    b = D.Bundle()
    b.add_text("daemon.log", f"a line with {TOKEN}")
    b.add_json("x.json", {"k": UNLOCK})
    dest = D.write(b, tmp_path / "b.tar.gz", False, "top")
    assert dest.stat().st_mode & 0o777 == 0o600
    with tarfile.open(dest) as tar:
        names = tar.getnames()
        body = b"".join(tar.extractfile(m).read() for m in tar.getmembers())  # type: ignore[union-attr]
    assert sorted(names) == ["top/daemon.log", "top/x.json"]
    assert TOKEN.encode() not in body and UNLOCK.encode() not in body and D.REDACTED.encode() in body
    d = D.write(b, tmp_path / "dir", True, "top")
    assert json.loads((d / "x.json").read_text()) == {"k": D.REDACTED}
    assert (d / "x.json").stat().st_mode & 0o777 == 0o600
