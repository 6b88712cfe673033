"""End to end with the stock `docker` CLI and docker-py against `shoal daemon --executor process`.

No Docker Engine is involved: tasks run as plain processes under the node's data dir. Tests that do not
disturb each other share one node (`shoal_module_node`, distinct service names); tests that change the
node itself (drain, swarm leave, task history, kill -9) get their own.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.managers import free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(180)

SLEEP = ("sleep", "600")
NOT_MANAGER = ('This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect '
               "this node to swarm and try again.")


# --- helpers --------------------------------------------------------------------------------------


def go_time(s: str) -> float:
    """A Go RFC 3339 timestamp with nanoseconds -> epoch seconds."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    assert m, s
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + float("0." + (m.group(2) or "0"))


def filters(**kw: str) -> str:
    return quote(json.dumps({k.replace("_", "-"): {v: True} for k, v in kw.items()}))


def tasks(node: ShoalNode, service: str) -> list[dict[str, Any]]:
    status, body = node.api("GET", f"/v1.41/tasks?filters={filters(service=service)}")
    assert status == 200, body
    return list(body)


def running(node: ShoalNode, service: str) -> list[dict[str, Any]]:
    return [t for t in tasks(node, service) if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]


def wait_running(node: ShoalNode, service: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    def ok() -> list[dict[str, Any]] | None:
        ts = running(node, service)
        live = [t for t in tasks(node, service) if t["DesiredState"] == "running"]
        return ts if len(ts) == n and len(live) == n else None

    try:
        return wait_until(ok, timeout, what=f"{n} running tasks of {service}")
    except AssertionError as e:
        summary = sorted((t.get("Slot", 0), t["ID"][:8], t["DesiredState"], t["Status"]["State"],
                          t["Status"].get("Err", "")) for t in tasks(node, service))
        raise AssertionError(f"{e}\ntasks: {summary}\ndaemon log:\n{node.log_tail(30)}") from None


def inspect(node: ShoalNode, kind: str, name: str) -> dict[str, Any]:
    out = json.loads(node.docker(kind, "inspect", name).stdout)
    assert len(out) == 1
    return dict(out[0])


def live_task_processes(node: ShoalNode, task_ids: set[str]) -> dict[str, list[int]]:
    """task id -> pids of shims still supervising it, for the given tasks."""
    return {tid: pids for tid in task_ids if (pids := node.shim_pids(tid))}


def replicas_column(node: ShoalNode, name: str) -> str:
    out = node.docker("service", "ls", "--filter", f"name={name}", "--format", "{{.Name}} {{.Replicas}}").stdout
    for line in out.splitlines():
        n, _, replicas = line.partition(" ")
        if n == name:
            return replicas
    return ""


def create(node: ShoalNode, name: str, *args: str, cmd: tuple[str, ...] = SLEEP) -> str:
    return node.docker("service", "create", "--detach", "--name", name, *args, "busybox", *cmd).stdout.strip()


def remove_and_check_gone(node: ShoalNode, name: str) -> None:
    ids = {t["ID"] for t in tasks(node, name)}
    assert ids
    node.docker("service", "rm", name)
    wait_until(lambda: not live_task_processes(node, ids), 30, what=f"the processes of {name} to exit")
    wait_until(lambda: not any((node.tasks_dir / tid).exists() for tid in ids), 30,
               what=f"the task dirs of {name} to be removed")
    assert name not in node.docker("service", "ls", "--format", "{{.Name}}").stdout.split()


# --- swarm ------------------------------------------------------------------------------------------


def test_inactive_node_refuses_swarm_endpoints(shoal_inactive: ShoalNode) -> None:
    node = shoal_inactive
    for path in ("/v1.41/services", "/v1.41/swarm", "/v1.41/nodes", "/v1.41/secrets", "/v1.41/tasks"):
        status, body = node.api("GET", path)
        assert (status, body) == (503, {"message": NOT_MANAGER}), path
    cp = node.docker("service", "ls", check=False)
    assert cp.returncode == 1
    assert NOT_MANAGER in cp.stderr
    info = json.loads(node.docker("info", "--format", "{{json .Swarm}}").stdout)
    assert info["LocalNodeState"] == "inactive"
    assert info["NodeID"] == ""
    assert info["ControlAvailable"] is False


def test_swarm_init_leave_init_cycle(shoal_inactive: ShoalNode) -> None:
    node = shoal_inactive
    node_ids = []
    for _ in range(2):
        out = node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr",
                          f"127.0.0.1:{free_port()}").stdout
        node_id = re.search(r"current node \((\w+)\) is now a manager", out)
        assert node_id, out
        info = json.loads(node.docker("info", "--format", "{{json .Swarm}}").stdout)
        assert info["LocalNodeState"] == "active"
        assert info["NodeID"] == node_id.group(1)
        assert info["ControlAvailable"] is True
        assert (info["Managers"], info["Nodes"]) == (1, 1)
        assert info["RemoteManagers"][0]["NodeID"] == node_id.group(1)
        node_ids.append(node_id.group(1))

        token = node.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        assert re.fullmatch(r"SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}", token), token
        assert token in node.docker("swarm", "join-token", "worker").stdout
        mgr_token = node.docker("swarm", "join-token", "-q", "manager").stdout.strip()
        assert mgr_token != token
        node.docker("swarm", "join-token", "--rotate", "worker")
        rotated = node.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        assert rotated != token and rotated.startswith(token[:60])  # same CA digest, new secret
        assert node.docker("swarm", "join-token", "-q", "manager").stdout.strip() == mgr_token

        create(node, "cyc", "--replicas", "2")
        wait_running(node, "cyc", 2)
        ids = {t["ID"] for t in tasks(node, "cyc")}
        cp = node.docker("swarm", "leave", check=False)
        assert cp.returncode == 1 and "--force" in cp.stderr
        assert "Node left the swarm." in node.docker("swarm", "leave", "--force").stdout
        # leaving removes the node's tasks, as dockerd removes their containers
        wait_until(lambda ids=ids: not live_task_processes(node, ids), 20, what="task processes to exit")
        info = json.loads(node.docker("info", "--format", "{{json .Swarm}}").stdout)
        assert info["LocalNodeState"] == "inactive" and info["NodeID"] == ""
        assert node.api("GET", "/v1.41/services")[0] == 503
    assert node_ids[0] != node_ids[1]


def test_task_history_limit(shoal_node: ShoalNode) -> None:
    node = shoal_node
    node.docker("swarm", "update", "--task-history-limit", "2")
    status, swarm = node.api("GET", "/v1.41/swarm")
    assert status == 200 and swarm["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 2
    info = json.loads(node.docker("info", "--format", "{{json .Swarm.Cluster.Spec.Orchestration}}").stdout)
    assert info["TaskHistoryRetentionLimit"] == 2
    create(node, "hist", "--replicas", "2", "--update-monitor", "200ms")
    wait_running(node, "hist", 2)
    for i in range(3):
        node.docker("service", "update", "--detach", "--env-add", f"ROUND={i}", "hist")
        wait_until(lambda i=i: (inspect(node, "service", "hist").get("UpdateStatus") or {}).get("State")
                   == "completed" and len(running(node, "hist")) == 2
                   and all(f"ROUND={i}" in (t["Spec"]["ContainerSpec"].get("Env") or [])
                           for t in running(node, "hist")), 60, what=f"update {i}")

    def per_slot() -> dict[int, int]:
        counts: dict[int, int] = {}
        for t in tasks(node, "hist"):
            counts[t["Slot"]] = counts.get(t["Slot"], 0) + 1
        return counts

    # As swarmkit's task reaper: at most `limit` tasks per slot, the running one included.
    wait_until(lambda: per_slot() == {1: 2, 2: 2}, 20, what="history trimmed to 2 per slot")
    ps = node.docker("service", "ps", "hist", "--format", "{{.Name}} {{.DesiredState}}").stdout.split("\n")
    assert sum(1 for line in ps if line.strip()) == 4


# --- nodes --------------------------------------------------------------------------------------


def test_node_ls_inspect_update_drain(shoal_node: ShoalNode) -> None:
    node = shoal_node
    ls = node.docker("node", "ls", "--format", "{{.ID}} {{.Hostname}} {{.Status}} {{.Availability}} "
                                               "{{.ManagerStatus}} {{.Self}}").stdout.split()
    node_id = ls[0]
    assert ls[1:] == ["node1", "Ready", "Active", "Leader", "true"]
    n = inspect(node, "node", "self")
    assert n["ID"] == node_id
    assert n["Spec"]["Role"] == "manager" and n["Spec"]["Availability"] == "active"
    assert n["Description"]["Hostname"] == "node1"
    assert n["Status"]["State"] == "ready"
    assert n["ManagerStatus"]["Leader"] is True
    assert "Hostname:" in node.docker("node", "inspect", "--pretty", "self").stdout

    node.docker("node", "update", "--label-add", "zone=a", "--label-add", "disk=ssd", node_id)
    assert inspect(node, "node", node_id)["Spec"]["Labels"] == {"zone": "a", "disk": "ssd"}
    assert node.docker("node", "ls", "--filter", "node.label=zone=a", "-q").stdout.split() == [node_id]
    assert node.docker("node", "ls", "--filter", "node.label=zone=b", "-q").stdout.split() == []
    assert node.docker("node", "ls", "--filter", "role=manager", "-q").stdout.split() == [node_id]
    assert node.docker("node", "ls", "--filter", "role=worker", "-q").stdout.split() == []

    create(node, "dr", "--replicas", "2")
    first = {t["ID"] for t in wait_running(node, "dr", 2)}

    node.docker("node", "update", "--availability", "pause", node_id)
    assert inspect(node, "node", node_id)["Spec"]["Availability"] == "pause"
    assert {t["ID"] for t in running(node, "dr")} == first  # pause keeps running tasks

    node.docker("node", "update", "--availability", "drain", node_id)
    assert node.docker("node", "ls", "--format", "{{.Availability}}").stdout.strip() == "Drain"
    wait_until(lambda: not live_task_processes(node, first), 30, what="drained tasks to stop")

    def pending() -> list[dict[str, Any]]:
        return [t for t in tasks(node, "dr") if t["DesiredState"] == "running" and t["Status"]["State"] == "pending"]

    ts = wait_until(lambda: len(pending()) == 2 and pending(), 30, what="2 pending tasks")
    for t in ts:
        assert t["Status"]["Err"] == "no suitable node (1 node not available for new tasks)"
    assert replicas_column(node, "dr") == "0/2"

    node.docker("node", "update", "--availability", "active", node_id)
    again = wait_running(node, "dr", 2)
    assert {t["ID"] for t in again} == {t["ID"] for t in ts}  # the pending tasks were placed
    assert not {t["ID"] for t in again} & first


# --- services -----------------------------------------------------------------------------------


def test_service_create_inspect_scale(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    sid = create(node, "web", "--replicas", "3", "--env", "GREETING=hi", "--label", "tier=front")
    assert re.fullmatch(r"[0-9a-z]{25}", sid)
    ts = wait_running(node, "web", 3)
    assert sorted(t["Slot"] for t in ts) == [1, 2, 3]
    assert len(node.command_pids().keys() & {t["ID"] for t in ts}) == 3
    wait_until(lambda: replicas_column(node, "web") == "3/3", 10, what="REPLICAS 3/3")

    svc = inspect(node, "service", "web")
    assert svc["ID"] == sid
    assert svc["Spec"]["Name"] == "web"
    assert svc["Spec"]["Labels"] == {"tier": "front"}
    assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}
    cs = svc["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert cs["Args"] == list(SLEEP) and cs["Env"] == ["GREETING=hi"]
    assert cs["Image"].startswith("busybox")
    pretty = node.docker("service", "inspect", "--pretty", "web").stdout
    assert re.search(r"^Name:\s+web$", pretty, re.M)
    assert re.search(r"^\s*Replicas:\s+3$", pretty, re.M)

    status, listed = node.api("GET", "/v1.41/services?status=true")
    assert status == 200
    web = next(s for s in listed if s["ID"] == sid)
    assert web["ServiceStatus"] == {"RunningTasks": 3, "DesiredTasks": 3, "CompletedTasks": 0}

    node.docker("service", "scale", "--detach", "web=5")
    assert inspect(node, "service", "web")["Spec"]["Mode"]["Replicated"]["Replicas"] == 5
    ts = wait_running(node, "web", 5)
    assert sorted(t["Slot"] for t in ts) == [1, 2, 3, 4, 5]
    wait_until(lambda: replicas_column(node, "web") == "5/5", 10, what="REPLICAS 5/5")

    node.docker("service", "scale", "--detach", "web=1")
    (last,) = wait_running(node, "web", 1)
    stopped = {t["ID"] for t in ts} - {last["ID"]}
    wait_until(lambda: not live_task_processes(node, stopped), 30, what="scaled-down processes to exit")
    wait_until(lambda: replicas_column(node, "web") == "1/1", 10, what="REPLICAS 1/1")
    remove_and_check_gone(node, "web")
    status, body = node.api("GET", "/v1.41/services/web")
    assert (status, body) == (404, {"message": "service web not found"})


def test_global_service(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "glob", "--mode", "global")
    (t,) = wait_running(node, "glob", 1)
    assert t["NodeID"] == inspect(node, "node", "self")["ID"]
    assert "Slot" not in t  # a global task has no slot (omitted, as dockerd omits zero values)
    assert inspect(node, "service", "glob")["Spec"]["Mode"] == {"Global": {}}
    wait_until(lambda: replicas_column(node, "glob") == "1/1", 10, what="global REPLICAS 1/1")
    remove_and_check_gone(node, "glob")


def test_update_start_first_and_rollback(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "upd", "--replicas", "4", "--update-delay", "0s", "--update-monitor", "500ms",
           "--rollback-monitor", "500ms")
    old = {t["ID"]: t for t in wait_running(node, "upd", 4)}
    node.docker("service", "update", "--detach", "--image", "busybox:1.36", "--env-add", "V=2",
                "--args", "sleep 601", "--update-order", "start-first", "--update-parallelism", "2", "upd")

    def done() -> bool:
        st = (inspect(node, "service", "upd").get("UpdateStatus") or {}).get("State")
        return st == "completed" and len(running(node, "upd")) == 4

    wait_until(done, 60, what="the start-first update to complete")
    svc = inspect(node, "service", "upd")
    cs = svc["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert cs["Image"] == "busybox:1.36" and cs["Env"] == ["V=2"] and cs["Args"] == ["sleep", "601"]
    assert svc["Spec"]["UpdateConfig"]["Order"] == "start-first"
    assert svc["Spec"]["UpdateConfig"]["Parallelism"] == 2
    assert svc["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Args"] == list(SLEEP)

    all_tasks = tasks(node, "upd")
    new = {t["Slot"]: t for t in all_tasks if t["DesiredState"] == "running"}
    assert sorted(new) == [1, 2, 3, 4]
    for t in new.values():
        assert t["Spec"]["ContainerSpec"]["Args"] == ["sleep", "601"]
    wait_until(lambda: all(tasks_by_id(node, "upd")[tid]["Status"]["State"] == "shutdown" for tid in old), 30,
               what="old tasks to shut down")
    final = tasks_by_id(node, "upd")
    for tid, t in old.items():
        o = final[tid]
        n = new[t["Slot"]]
        # start-first: the replacement was running before the old task was shut down
        assert go_time(n["Status"]["Timestamp"]) <= go_time(o["Status"]["Timestamp"]), (n["Status"], o["Status"])
    assert not live_task_processes(node, set(old))

    node.docker("service", "rollback", "--detach", "upd")

    def rolled_back() -> bool:
        s = inspect(node, "service", "upd")
        return (s.get("UpdateStatus") or {}).get("State") == "rollback_completed" \
            and len(running(node, "upd")) == 4 \
            and all(t["Spec"]["ContainerSpec"]["Args"] == list(SLEEP) for t in running(node, "upd"))

    wait_until(rolled_back, 60, what="the rollback to complete")
    cs = inspect(node, "service", "upd")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert cs["Args"] == list(SLEEP) and "Env" not in cs and cs["Image"].startswith("busybox")
    assert cs["Image"] != "busybox:1.36"
    remove_and_check_gone(node, "upd")


def tasks_by_id(node: ShoalNode, service: str) -> dict[str, dict[str, Any]]:
    return {t["ID"]: t for t in tasks(node, service)}


def test_secrets_and_configs_visible_with_modes(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    node.docker("secret", "create", "--label", "k=v", "pw", "-", input="s3cret\n")
    cfg = node.workdir / "app.conf"
    cfg.write_text("color=blue\n")
    node.docker("config", "create", "appconf", str(cfg))
    sec = inspect(node, "secret", "pw")
    assert sec["Spec"]["Name"] == "pw" and sec["Spec"]["Labels"] == {"k": "v"}
    assert "Data" not in sec["Spec"]  # secret data is never returned
    conf = inspect(node, "config", "appconf")
    assert conf["Spec"]["Data"] == "Y29sb3I9Ymx1ZQo="  # base64 of the file

    script = ('stat -c "secret %a" "$SHOAL_SECRETS_DIR/pw.txt"; cat "$SHOAL_SECRETS_DIR/pw.txt"; '
              'stat -c "config %a" "$SHOAL_CONFIGS_DIR/etc/app.conf"; cat "$SHOAL_CONFIGS_DIR/etc/app.conf"; '
              "echo done; sleep 600")
    create(node, "files", "--secret", "source=pw,target=pw.txt,mode=0400",
           "--config", "source=appconf,target=/etc/app.conf,mode=0440", cmd=("sh", "-c", script))
    wait_running(node, "files", 1)

    def logs() -> str:
        cp = node.docker("service", "logs", "--raw", "--no-trunc", "files")
        return cp.stdout if "done" in cp.stdout else ""

    out = wait_until(logs, 30, what="the service's output")
    assert out.splitlines() == ["secret 400", "s3cret", "config 440", "color=blue", "done"]
    refs = inspect(node, "service", "files")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert refs["Secrets"][0]["SecretName"] == "pw" and refs["Secrets"][0]["File"]["Mode"] == 0o400
    assert refs["Configs"][0]["ConfigName"] == "appconf" and refs["Configs"][0]["File"]["Name"] == "/etc/app.conf"

    cp = node.docker("secret", "rm", "pw", check=False)
    assert cp.returncode == 1
    assert "rpc error: code = InvalidArgument desc = secret 'pw' is in use by the following service: files" \
        in cp.stderr
    status, body = node.api("DELETE", "/v1.41/configs/appconf")
    assert status == 400
    assert body["message"].endswith("config 'appconf' is in use by the following service: files")
    remove_and_check_gone(node, "files")
    node.docker("secret", "rm", "pw")
    node.docker("config", "rm", "appconf")
    assert node.docker("secret", "ls", "-q").stdout.strip() == ""


def test_constraints_and_preferences(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    node_id = inspect(node, "node", "self")["ID"]
    create(node, "mgr", "--constraint", "node.role==manager", "--placement-pref", "spread=node.labels.rack")
    (t,) = wait_running(node, "mgr", 1)
    assert t["NodeID"] == node_id
    placement = inspect(node, "service", "mgr")["Spec"]["TaskTemplate"]["Placement"]
    assert placement["Constraints"] == ["node.role==manager"]
    assert placement["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.rack"}}]

    create(node, "zoned", "--constraint", "node.labels.zone==x")

    def pending() -> list[dict[str, Any]]:
        # The allocator moves the task to pending; the scheduler's verdict lands in a later transaction.
        return [t for t in tasks(node, "zoned") if t["Status"]["State"] == "pending" and t["Status"].get("Err")]

    (p,) = wait_until(pending, 20, what="a pending task")
    assert p["Status"]["Err"] == "no suitable node (scheduling constraints not satisfied on 1 node)"
    assert "no suitable node" in node.docker("service", "ps", "--no-trunc", "zoned").stdout
    node.docker("node", "update", "--label-add", "zone=x", node_id)
    (r,) = wait_running(node, "zoned", 1)
    assert r["ID"] == p["ID"]
    node.docker("node", "update", "--label-rm", "zone", node_id)
    remove_and_check_gone(node, "zoned")
    remove_and_check_gone(node, "mgr")


# --- stacks ---------------------------------------------------------------------------------------

COMPOSE = """\
version: "3.8"
services:
  api:
    image: busybox
    command: ["sh", "-c", "cat $$SHOAL_SECRETS_DIR/db_pw; echo; sleep 600"]
    networks: [backend]
    secrets: [db_pw]
    configs:
      - source: api_conf
        target: /etc/api.conf
    environment:
      MODE: prod
    deploy:
      replicas: 2
      placement:
        constraints: ["node.role == manager"]
        preferences:
          - spread: node.labels.zone
      update_config:
        parallelism: 2
        delay: 1s
        order: start-first
        failure_action: rollback
      rollback_config:
        parallelism: 1
        order: stop-first
      restart_policy:
        condition: on-failure
        delay: 2s
        max_attempts: 3
        window: 30s
      resources:
        limits:
          cpus: "0.5"
          memory: 64M
        reservations:
          cpus: "0.1"
          memory: 16M
  agent:
    image: busybox
    command: ["sleep", "600"]
    networks: [backend]
    deploy:
      mode: global
networks:
  backend:
    driver: overlay
secrets:
  db_pw:
    file: ./db_pw.txt
configs:
  api_conf:
    file: ./api.conf
"""


def test_stack_deploy_ls_services_ps_rm(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    (node.workdir / "compose.yml").write_text(COMPOSE)
    (node.workdir / "db_pw.txt").write_text("hunter2")
    (node.workdir / "api.conf").write_text("x=1\n")
    node.docker("stack", "deploy", "-c", "compose.yml", "demo")
    wait_running(node, "demo_api", 2)
    wait_running(node, "demo_agent", 1)

    assert node.docker("stack", "ls", "--format", "{{.Name}} {{.Services}}").stdout.split() == ["demo", "2"]
    svcs = node.docker("stack", "services", "demo", "--format", "{{.Name}} {{.Mode}} {{.Replicas}}").stdout
    wait_until(lambda: sorted(node.docker("stack", "services", "demo", "--format",
                                          "{{.Name}} {{.Mode}} {{.Replicas}}").stdout.splitlines())
               == ["demo_agent global 1/1", "demo_api replicated 2/2"], 20, what=f"stack services, had {svcs}")
    ps = node.docker("stack", "ps", "demo", "--format", "{{.Name}} {{.CurrentState}}").stdout.splitlines()
    assert len(ps) == 3 and all("Running" in line for line in ps), ps

    api = inspect(node, "service", "demo_api")
    spec = api["Spec"]
    assert spec["Labels"]["com.docker.stack.namespace"] == "demo"
    assert spec["Mode"] == {"Replicated": {"Replicas": 2}}
    tt = spec["TaskTemplate"]
    assert tt["Placement"]["Constraints"] == ["node.role == manager"]
    assert tt["Placement"]["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]
    assert tt["RestartPolicy"] == {"Condition": "on-failure", "Delay": 2_000_000_000, "MaxAttempts": 3,
                                   "Window": 30_000_000_000}
    assert tt["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * 1024 * 1024}
    assert tt["Resources"]["Reservations"] == {"NanoCPUs": 100_000_000, "MemoryBytes": 16 * 1024 * 1024}
    assert spec["UpdateConfig"]["Parallelism"] == 2 and spec["UpdateConfig"]["Order"] == "start-first"
    assert spec["UpdateConfig"]["FailureAction"] == "rollback" and spec["UpdateConfig"]["Delay"] == 1_000_000_000
    assert spec["RollbackConfig"]["Parallelism"] == 1 and spec["RollbackConfig"]["Order"] == "stop-first"
    net = inspect(node, "network", "demo_backend")
    assert net["Driver"] == "overlay" and net["Scope"] == "swarm"
    assert tt["Networks"][0]["Target"] == net["Id"]
    assert inspect(node, "secret", "demo_db_pw")["Spec"]["Labels"]["com.docker.stack.namespace"] == "demo"
    assert inspect(node, "config", "demo_api_conf")["Spec"]["Labels"]["com.docker.stack.namespace"] == "demo"

    logs = wait_until(lambda: "hunter2" in (out := node.docker("service", "logs", "--raw", "demo_api").stdout)
                      and out, 20, what="the api's output")
    assert logs.splitlines() == ["hunter2", "hunter2"]

    ids = {t["ID"] for s in ("demo_api", "demo_agent") for t in tasks(node, s)}
    node.docker("stack", "rm", "demo")
    label = "label=com.docker.stack.namespace=demo"
    for kind in ("service", "secret", "config", "network"):
        wait_until(lambda kind=kind: node.docker(kind, "ls", "-q", "--filter", label).stdout.strip() == "", 30,
                   what=f"the stack's {kind}s to be removed")
    assert node.docker("stack", "ls", "--format", "{{.Name}}").stdout.strip() == ""
    wait_until(lambda: not live_task_processes(node, ids), 30, what="the stack's processes to exit")


# --- bad input --------------------------------------------------------------------------------------


def _svc_body(name: str, **extra: Any) -> bytes:
    body: dict[str, Any] = {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox",
                                                                             "Args": list(SLEEP)}}}
    body.update(extra)
    return json.dumps(body).encode()


def test_bad_input_answers_like_dockerd(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    # unknown fields are ignored, as dockerd's JSON decoding ignores them
    body = json.loads(_svc_body("unk", Bogus=1))
    body["TaskTemplate"]["ContainerSpec"]["Weird"] = {"x": 1}
    status, out = node.api("POST", "/v1.41/services/create", json.dumps(body).encode())
    assert status == 201, out
    assert set(out) == {"ID", "Warnings"}

    # duplicate name
    cp = node.docker("service", "create", "--detach", "--name", "unk", "busybox", *SLEEP, check=False)
    assert cp.returncode == 1
    assert "Error response from daemon: rpc error: code = AlreadyExists desc = name conflicts with an existing " \
           "object: service unk already exists" in cp.stderr
    status, out = node.api("POST", "/v1.41/services/create", _svc_body("unk"))
    assert status == 409
    assert out == {"message": "rpc error: code = AlreadyExists desc = name conflicts with an existing object: "
                              "service unk already exists"}

    # invalid constraint: dockerd 20.10 answers 500 with swarmkit's text
    status, out = node.api("POST", "/v1.41/services/create", _svc_body(
        "badc", TaskTemplate={"ContainerSpec": {"Image": "busybox", "Args": list(SLEEP)},
                              "Placement": {"Constraints": ["node.foo=bar"]}}))
    assert (status, out) == (500, {"message": "rpc error: code = Unknown desc = constraint expected one operator "
                                              "from ==, !="})
    cp = node.docker("service", "create", "--detach", "--name", "badc", "--constraint", "node.foo=bar",
                     "busybox", *SLEEP, check=False)
    assert cp.returncode == 1
    assert "constraint expected one operator from ==, !=" in cp.stderr

    # bad JSON: Go's decoder texts, with the "invalid JSON: " prefix of the dockerd whose API version we serve
    for raw, detail in ((b"{bad", "invalid character 'b' looking for beginning of object key string"),
                        (b'{"Name":}', "invalid character '}' looking for beginning of value"),
                        (b'{"Name" 1}', "invalid character '1' after object key"),
                        (b'{"Name":"a" "b"}', "invalid character '\"' after object key:value pair"),
                        (b'{"Name":"a', "unexpected EOF"),
                        (b"", "got EOF while reading request body")):
        status, out = node.api("POST", "/v1.41/services/create", raw)
        assert (status, out) == (400, {"message": f"invalid JSON: {detail}"}), raw

    # unknown service
    status, out = node.api("GET", "/v1.41/services/nope")
    assert (status, out) == (404, {"message": "service nope not found"})
    cp = node.docker("service", "inspect", "nope", check=False)
    assert cp.returncode == 1 and "no such service: nope" in cp.stderr.lower()

    # stale version
    version = inspect(node, "service", "unk")["Version"]["Index"]
    node.docker("service", "update", "--detach", "--env-add", "A=1", "unk")
    status, out = node.api("POST", f"/v1.41/services/unk/update?version={version}", _svc_body("unk"))
    assert (status, out) == (500, {"message": "rpc error: code = Unknown desc = update out of sequence"})
    remove_and_check_gone(node, "unk")


# --- docker-py ----------------------------------------------------------------------------------


def test_docker_py(shoal_inactive: ShoalNode) -> None:
    import docker
    from docker.types import EndpointSpec, SecretReference, ServiceMode

    client = shoal_inactive.client()
    node_id = client.swarm.init(advertise_addr="127.0.0.1", listen_addr=f"127.0.0.1:{free_port()}")
    assert re.fullmatch(r"[0-9a-z]{25}", node_id)
    assert client.info()["Swarm"]["NodeID"] == node_id
    client.swarm.reload()
    assert client.swarm.attrs["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 5
    nodes = client.nodes.list()
    assert [n.id for n in nodes] == [node_id]
    assert nodes[0].attrs["Spec"]["Role"] == "manager"

    secret = client.secrets.create(name="tok", data=b"abc", labels={"a": "b"})
    assert client.secrets.get(secret.id).name == "tok"
    svc = client.services.create("busybox", command=["sh", "-c", 'cat "$SHOAL_SECRETS_DIR/tok"; sleep 600'],
                                 name="py", mode=ServiceMode("replicated", replicas=2),
                                 secrets=[SecretReference(secret.id, "tok")], endpoint_spec=EndpointSpec())
    wait_running(shoal_inactive, "py", 2)
    svc.reload()
    assert svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretName"] == "tok"
    assert svc.scale(3) is not None
    wait_running(shoal_inactive, "py", 3)
    svc.reload()
    stale = svc.version
    svc.update(env=["X=1"])
    wait_until(lambda: all("X=1" in (t["Spec"]["ContainerSpec"].get("Env") or [])
                           for t in running(shoal_inactive, "py")) and len(running(shoal_inactive, "py")) == 3,
               60, what="the docker-py update")
    logs = b"".join(svc.logs(stdout=True, stderr=True))
    assert b"abc" in logs

    with pytest.raises(docker.errors.APIError) as exc:
        client.api.update_service(svc.id, stale, task_template={"ContainerSpec": {"Image": "busybox"}})
    assert exc.value.status_code == 500
    assert "update out of sequence" in str(exc.value.explanation)
    with pytest.raises(docker.errors.NotFound):
        client.services.get("nope")
    with pytest.raises(docker.errors.APIError) as exc:
        client.secrets.get("tok").remove()
    assert exc.value.status_code == 400
    ids = {t["ID"] for t in tasks(shoal_inactive, "py")}
    svc.remove()
    wait_until(lambda: not live_task_processes(shoal_inactive, ids), 30, what="the service's processes to exit")
    client.secrets.get("tok").remove()
    assert client.secrets.list() == []


# --- events -------------------------------------------------------------------------------------


def test_events_replay(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    since = time.time() - 1
    sid = create(node, "evt", "--update-monitor", "200ms")
    wait_running(node, "evt", 1)
    node.docker("service", "update", "--detach", "--env-add", "E=1", "evt")
    wait_until(lambda: (inspect(node, "service", "evt").get("UpdateStatus") or {}).get("State") == "completed",
               30, what="the update to complete")
    node.docker("service", "rm", "evt")
    until = time.time() + 1
    wait_until(lambda: time.time() > until, 5, what="the until timestamp to pass")
    cp = node.docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--filter", "type=service",
                     "--format", "{{json .}}", timeout=20)
    evs = [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]
    mine = [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in evs if e["Actor"]["ID"] == sid]
    # dockerd reports every change of the service object: the spec update, then its update status
    deduped = [a for i, a in enumerate(mine) if i == 0 or mine[i - 1] != a]
    assert deduped == [("create", "evt"), ("update", "evt"), ("remove", "evt")], evs
    spec_update = next(e for e in evs if e["Actor"]["ID"] == sid and e["Action"] == "update")
    assert spec_update["Actor"]["Attributes"] == {"name": "evt"}
    states = [e["Actor"]["Attributes"] for e in evs if e["Actor"]["ID"] == sid and e["Action"] == "update"][1:]
    # as dockerd: the first update-state event has no "updatestate.old"
    assert states == [{"name": "evt", "updatestate.new": "updating"},
                      {"name": "evt", "updatestate.old": "updating", "updatestate.new": "completed"}], states
    assert all(e["Type"] == "service" and e["scope"] == "swarm" for e in evs)


# --- restart ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill9_during_scale_up_converges_without_duplicates(shoal_node: ShoalNode) -> None:
    node = shoal_node
    create(node, "scaled", "--replicas", "2")
    wait_running(node, "scaled", 2)
    node.docker("service", "scale", "--detach", "scaled=8")
    node.kill9()
    node.start()
    ts = wait_running(node, "scaled", 8, timeout=60)
    assert sorted(t["Slot"] for t in ts) == list(range(1, 9))
    ids = {t["ID"] for t in ts}

    def converged() -> bool:
        shims = {tid: node.shim_pids(tid) for tid in ids}
        return all(len(p) == 1 for p in shims.values())

    wait_until(converged, 30, what="one shim per running task")
    # no duplicate processes: exactly one live shim per running task, none for any other task dir
    all_shims = node.shim_pids()
    assert len(all_shims) == 8, all_shims
    assert set(node.command_pids()) == ids
    # no task lost: every slot has one running task and nothing else is desired running
    assert len([t for t in tasks(node, "scaled") if t["DesiredState"] == "running"]) == 8
    assert replicas_column(node, "scaled") == "8/8"


def test_restart_adopts_running_tasks(tmp_path: Path, shoal_node: ShoalNode) -> None:
    node = shoal_node
    create(node, "keep", "--replicas", "2")
    before = {t["ID"]: t for t in wait_running(node, "keep", 2)}
    pids_before = node.command_pids()
    node.kill9()
    node.start()
    after = {t["ID"] for t in wait_running(node, "keep", 2)}
    assert after == set(before)
    assert node.command_pids() == pids_before  # adopted, not restarted


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_dirs", [3, 6])
def test_kill9_while_tasks_are_starting(shoal_node: ShoalNode, kill_after_dirs: int) -> None:
    """kill -9 once the agent has begun preparing the new tasks (some started, some not)."""
    node = shoal_node
    create(node, "mid", "--replicas", "1")
    (first,) = wait_running(node, "mid", 1)
    first_pid = node.command_pids()[first["ID"]]
    node.docker("service", "scale", "--detach", "mid=8")
    wait_until(lambda: len(node.task_dirs()) >= kill_after_dirs, 30, interval=0.005, what="tasks being prepared")
    node.kill9()
    node.start()
    ts = wait_running(node, "mid", 8, timeout=60)
    assert sorted(t["Slot"] for t in ts) == list(range(1, 9))
    ids = {t["ID"] for t in ts}
    wait_until(lambda: len(node.shim_pids()) == 8, 30, what="8 shims")
    assert {tid: len(node.shim_pids(tid)) for tid in ids} == dict.fromkeys(ids, 1)
    assert set(node.command_pids()) == ids
    assert node.command_pids()[first["ID"]] == first_pid  # the task that ran before was adopted
    # a task dir left by a task that is no longer wanted would be an orphan: none
    assert {d.name for d in node.task_dirs()} <= {t["ID"] for t in tasks(node, "mid")}
