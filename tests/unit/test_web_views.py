"""The web view's pure parts: the page's model from Engine API answers (what it copies, what it never does), a
log line taken apart, the listener and Host rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.web import views
from shoal.web.auth import WebConfigError, _loopback_host, check_listener, new_token
from shoal.web.engine import log_line

NODE = {"ID": "n1", "Spec": {"Role": "manager", "Availability": "active", "Labels": {"zone": "a"}},
        "Description": {"Hostname": "mgr", "Platform": {"OS": "linux", "Architecture": "x86_64"},
                        "Resources": {"NanoCPUs": 2_000_000_000, "MemoryBytes": 4 << 30},
                        "Engine": {"EngineVersion": "shoal-process"}},
        "Status": {"State": "ready", "Addr": "10.0.0.1"},
        "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.1:2377"}}
WORKER = {"ID": "n2", "Spec": {"Role": "worker", "Availability": "drain"},
          "Description": {"Hostname": "w1"}, "Status": {"State": "down", "Message": "heartbeat failure"}}
SERVICE = {"ID": "s1", "Version": {"Index": 9},
           "Spec": {"Name": "web", "Labels": {"com.docker.stack.namespace": "shop"},
                    "TaskTemplate": {"ContainerSpec": {"Image": "nginx:1@sha256:abc", "Env": ["PASSWORD=x"]}},
                    "Mode": {"Replicated": {"Replicas": 3}}},
           "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                   "PublishMode": "ingress"}]},
           "UpdateStatus": {"State": "paused", "Message": "update paused due to failure"},
           "PreviousSpec": {"Name": "web"}, "ServiceStatus": {"RunningTasks": 2, "DesiredTasks": 3}}


def _task(tid: str, state: str, node: str = "n1", err: str = "", ts: str = "2026-01-01T00:00:01Z",
          desired: str = "running") -> dict[str, object]:
    return {"ID": tid, "ServiceID": "s1", "Slot": 1, "NodeID": node, "DesiredState": desired,
            "Status": {"State": state, "Err": err, "Timestamp": ts},
            "Spec": {"ContainerSpec": {"Image": "nginx:1", "Env": ["PASSWORD=x"]},
                     "Resources": {"Reservations": {"NanoCPUs": 500_000_000, "MemoryBytes": 1 << 20}}}}


def _snapshot(**kw: object) -> dict[str, object]:
    base: dict[str, object] = dict(
        info={"Name": "mgr", "Swarm": {"NodeID": "n1", "LocalNodeState": "active", "ControlAvailable": True,
                                       "Cluster": {"ID": "c1"}}},
        nodes=[NODE, WORKER], services=[SERVICE],
        tasks=[_task("t1", "running"), _task("t2", "running"),
               _task("t0", "failed", err="task: non-zero exit (1)", ts="2026-01-01T00:00:00Z", desired="shutdown"),
               _task("t3", "pending", node="", err="no suitable node", ts="2026-01-01T00:00:02Z")],
        secrets=[{"ID": "x1", "Spec": {"Name": "db", "Data": "c2VjcmV0", "Labels": {"a": "b"}}}],
        configs=[{"ID": "y1", "Spec": {"Name": "cfg", "Data": "cGF5bG9hZA=="}}],
        networks=[{"Id": "w", "Name": "front", "Driver": "overlay", "Scope": "swarm",
                   "IPAM": {"Config": [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]}},
                  {"Id": "b", "Name": "bridge", "Driver": "bridge", "Scope": "local"}],
        raft={"id": 1, "term": 3, "commit": 40, "applied": 40, "role": "leader", "secret_thing": "no"},
        heartbeats={"period": 5.0, "nodes": {"n1": 0.4}})
    base.update(kw)
    return views.snapshot(**base)  # type: ignore[arg-type]


def test_the_model_of_nodes_services_and_tasks() -> None:
    m = _snapshot()
    mgr, w1 = m["nodes"]  # type: ignore[misc]
    assert (mgr["hostname"], mgr["leader"], mgr["heartbeat_age"], mgr["tasks"]) == ("mgr", True, 0.4, 2)
    assert (mgr["reserved_nano_cpus"], mgr["reserved_memory"]) == (1_000_000_000, 2 << 20)
    assert mgr["services"] == ["web"] and mgr["platform"] == "linux/x86_64"
    assert (w1["state"], w1["message"], w1["heartbeat_age"], w1["availability"]) == (
        "down", "heartbeat failure", None, "drain")
    (svc,) = m["services"]  # type: ignore[misc]
    assert (svc["stack"], svc["image"], svc["replicas"], svc["desired"], svc["running"]) == (
        "shop", "nginx:1", 3, 3, 2)
    assert svc["ports"] == ["8080:80/tcp"]
    assert svc["update"]["state"] == "paused" and svc["can_rollback"]
    assert svc["last_error"] == "no suitable node"  # the newest error
    assert m["stacks"] == [{"name": "shop", "services": ["web"], "desired": 3, "running": 2}]
    assert [n["name"] for n in m["networks"]] == ["front"]  # swarm scope only
    assert m["networks"][0]["subnets"] == [{"subnet": "10.0.1.0/24", "gateway": "10.0.1.1"}]  # type: ignore[index]


def test_no_payload_environment_or_unknown_field_is_copied() -> None:
    m = _snapshot()
    text = json.dumps(m)
    for leaked in ("c2VjcmV0", "cGF5bG9hZA==", "PASSWORD", "secret_thing"):
        assert leaked not in text
    assert m["secrets"] == [{"id": "x1", "name": "db", "created": "", "updated": "", "labels": {"a": "b"},
                             "driver": "", "templating": ""}]


def test_update_progress_counts_tasks_started_since_the_update_began() -> None:
    svc = {**SERVICE, "UpdateStatus": {"State": "updating", "StartedAt": "2026-01-01T00:00:00.5Z"}}
    old = {**_task("t1", "running"), "CreatedAt": "2026-01-01T00:00:00.123456789Z"}
    new = {**_task("t2", "running"), "CreatedAt": "2026-01-01T00:00:00.75Z"}
    starting = {**_task("t4", "starting"), "CreatedAt": "2026-01-01T00:00:01Z"}
    m = _snapshot(services=[svc], tasks=[old, new, starting])
    assert m["services"][0]["update"]["progress"] == "1/3"  # type: ignore[index]
    done = {**SERVICE, "UpdateStatus": {"State": "completed", "StartedAt": "2026-01-01T00:00:00.5Z"}}
    assert _snapshot(services=[done], tasks=[new])["services"][0]["update"]["progress"] == ""  # type: ignore[index]


def test_raft_ids_reach_the_browser_unrounded() -> None:
    big = 5045145388190634017  # past 2**53: a JavaScript number would make it ...634000
    member = views.raft_view({"id": big, "leader": big, "voters": [big, 7], "commit": 40, "applied": 38}, [])["member"]
    assert (member["id"], member["leader"], member["voters"], member["apply_lag"]) == (
        str(big), str(big), [str(big), "7"], 2)


def test_raft_health_needs_a_quorum_and_a_leader() -> None:
    def health(*managers: tuple[str, bool]) -> bool:
        nodes = [{"id": f"m{i}", "hostname": f"m{i}", "role": "manager", "manager_addr": "", "leader": lead,
                  "reachability": r} for i, (r, lead) in enumerate(managers)]
        return bool(views.raft_view({}, nodes)["healthy"])

    assert health(("reachable", True), ("reachable", False), ("unreachable", False))
    assert not health(("reachable", True), ("unreachable", False), ("unreachable", False))
    assert not health(("reachable", False), ("reachable", False), ("reachable", False))
    assert not health()


def test_a_log_line_taken_apart() -> None:
    raw = ("2026-12-07T15:11:02.385577202Z com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,"
           "com.docker.swarm.task.id=t1 hello world")
    assert log_line(raw) == {"time": "2026-12-07T15:11:02.385577202Z", "task": "t1", "node": "n1",
                             "line": "hello world"}
    assert log_line("no timestamp here") == {"time": "", "task": "", "node": "", "line": "no timestamp here"}


@pytest.mark.parametrize("host,ok", [("localhost", True), ("localhost:8080", True), ("127.0.0.1:1", True),
                                     ("127.9.9.9", True), ("[::1]:8080", True), ("evil.example", False),
                                     ("evil.example:8080", False), ("127.0.0.1.nip.io", False), ("10.0.0.1", False)])
def test_loopback_host_names(host: str, ok: bool) -> None:
    assert _loopback_host(host) is ok


def test_plain_http_only_on_loopback(tmp_path: Path) -> None:
    check_listener("127.0.0.1", None)
    check_listener("::1", None)
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(WebConfigError, match="needs TLS"):
            check_listener(host, None)


def test_a_new_token_each_start_for_root_only(tmp_path: Path) -> None:
    a, b = new_token(tmp_path), new_token(tmp_path)
    assert a != b and (tmp_path / "web-token").read_text().strip() == b
    assert (tmp_path / "web-token").stat().st_mode & 0o777 == 0o600


def test_a_login_lasts_a_shift(monkeypatch: pytest.MonkeyPatch) -> None:
    from unittest.mock import Mock

    from shoal.web import auth

    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    access = auth.Access("t", loopback=True, tls=False, port=1)
    sid = access.login("someone")
    request = Mock(cookies={"shoal_web_1": sid}, transport=None)
    assert access.who(request) == "someone"
    now[0] += auth.SESSION_TTL
    assert access.who(request) is None
    assert sid not in access.sessions


def test_the_spec_summary_names_settings_never_contents() -> None:
    svc = {**SERVICE, "Spec": {**SERVICE["Spec"], "TaskTemplate": {  # type: ignore[dict-item]
        "ContainerSpec": {"Image": "nginx:1", "Env": ["PASSWORD=x"], "Args": ["--token=y"],
                          "Secrets": [{"SecretName": "db", "SecretID": "x1", "File": {"Name": "db_pw"}}],
                          "Configs": [{"ConfigName": "cfg", "File": {"Name": "/etc/app.conf"}}],
                          "Mounts": [{"Type": "bind", "Source": "/srv", "Target": "/data", "ReadOnly": True}]},
        "Placement": {"Constraints": ["node.role==worker"], "MaxReplicas": 2},
        "Resources": {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 256 << 20}},
        "RestartPolicy": {"Condition": "on-failure", "Delay": 5_000_000_000, "MaxAttempts": 3},
        "Networks": [{"Target": "w"}]},
        "UpdateConfig": {"Parallelism": 2, "Delay": 90_000_000_000, "FailureAction": "rollback",
                         "Order": "start-first"}}}
    (view,) = _snapshot(services=[svc])["services"]  # type: ignore[misc]
    sp = view["spec"]
    assert sp["constraints"] == ["node.role==worker"] and sp["max_replicas_per_node"] == 2
    assert sp["limits"] == "0.5 CPU, 256 MiB" and sp["reservations"] == ""
    assert sp["restart"] == "on-failure, delay 5s, at most 3 attempts"
    assert sp["update"] == "parallelism 2, delay 1m30s, on failure rollback, order start-first"
    assert sp["networks"] == ["front"]  # by name
    assert sp["secrets"] == ["db → db_pw"] and sp["configs"] == ["cfg → /etc/app.conf"]
    assert sp["mounts"] == ["bind /srv → /data (ro)"]
    text = json.dumps(view)
    assert "PASSWORD" not in text and "--token" not in text


def test_a_moved_task_says_what_moved_it() -> None:
    moved = {**_task("t4", "running", node="n2"), "Labels": {"com.shoal.move": "rebalance",
                                                              "com.shoal.drain.replaces": "t1"}}
    m = _snapshot(tasks=[_task("t1", "running"), moved])
    by_id = {t["id"]: t for t in m["tasks"]}  # type: ignore[attr-defined]
    assert (by_id["t4"]["moved"], by_id["t1"]["moved"]) == ("rebalance", "")


def test_a_schedule_from_the_labels() -> None:
    labels = {"swarm.cronjob.enable": "true", "swarm.cronjob.schedule": "0 3 * * *",
              "com.shoal.cron.timezone": "Europe/Berlin", "swarm.cronjob.skip-running": "true",
              "com.shoal.cron.next-run": "2026-12-08T02:00:00Z"}
    assert views.cron_view(labels) == {"schedule": "0 3 * * *", "timezone": "Europe/Berlin", "skip_running": True,
                                       "next_run": "2026-12-08T02:00:00Z", "last_run": ""}
    assert views.cron_view({**labels, "swarm.cronjob.enable": "false"}) is None
    svc = {**SERVICE, "Spec": {**SERVICE["Spec"], "Labels": labels}}  # type: ignore[dict-item]
    assert views.service_view(svc, [])["cron"]["schedule"] == "0 3 * * *"
    assert views.service_view(SERVICE, [])["cron"] is None
