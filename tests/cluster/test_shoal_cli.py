"""The `shoal` subcommands (status, top, wait, scale, rollback, drain, diagnose) run as real processes against real
`shoal daemon`s (process executor), finding them as the docker CLI does: DOCKER_HOST, -H, a docker context, TCP with
TLS. Read-only checks share one node; the rest get their own."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.managers import ManagerCluster, free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import Cluster

pytestmark = pytest.mark.timeout(240)

SLEEP = ("busybox", "sleep", "600")


def shoal(*args: str, env: dict[str, str], check: bool = True, timeout: float = 120,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run([sys.executable, "-m", "shoal.cli", *args], env={**env, "COLUMNS": "200"},
                        capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and cp.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)} exited {cp.returncode}\nstdout: {cp.stdout}\n"
                             f"stderr: {cp.stderr}")
    return cp


def status_json(node: ShoalNode, env: dict[str, str] | None = None) -> dict[str, Any]:
    return dict(json.loads(shoal("status", "--json", env=env or node.env).stdout))


def services(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in st["services"]}


def create(node: ShoalNode, name: str, *args: str) -> None:
    node.docker("service", "create", "--detach", "--name", name, *args, *SLEEP)


def image_of(node: ShoalNode, name: str) -> str:
    return node.docker("service", "inspect", name, "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}"
                       ).stdout.strip()


# --- finding the daemon ------------------------------------------------------------------------------


def test_version_needs_no_daemon(tmp_path: Path) -> None:
    from shoal import __version__

    out = shoal("--version", env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}).stdout
    assert out.startswith(f"shoal {__version__} ")


def test_unreachable_daemon_is_reported(tmp_path: Path) -> None:
    cp = shoal("status", env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}, check=False)
    assert cp.returncode == 1
    assert f"Cannot connect to the Shoal daemon at unix://{tmp_path}/none.sock" in cp.stderr


def test_host_flag_env_and_docker_context(shoal_module_node: ShoalNode, tmp_path: Path) -> None:
    node = shoal_module_node
    node_id = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    by_env = shoal("status", env=node.env).stdout
    assert node_id[:12] in by_env and "Raft: healthy; 1/1 managers reachable (quorum 1); leader node1" in by_env

    bare = {k: v for k, v in node.env.items() if k != "DOCKER_HOST"}
    bare["DOCKER_CONFIG"] = str(tmp_path / "cfg")
    by_flag = shoal("-H", node.url, "status", env=bare).stdout
    assert node_id[:12] in by_flag

    # A context made by the stock CLI, selected as the current one in config.json: no DOCKER_HOST, no flag.
    subprocess.run(["docker", "context", "create", "shoaltest", "--docker", f"host={node.url}"], env=bare,
                   check=True, capture_output=True, timeout=30)
    meta = tmp_path / "cfg" / "contexts" / "meta" / hashlib.sha256(b"shoaltest").hexdigest() / "meta.json"
    assert meta.is_file()
    subprocess.run(["docker", "context", "use", "shoaltest"], env=bare, check=True, capture_output=True, timeout=30)
    assert json.loads((tmp_path / "cfg" / "config.json").read_text())["currentContext"] == "shoaltest"
    assert node_id[:12] in shoal("status", env=bare).stdout
    # DOCKER_CONTEXT naming a context that does not exist wins over config.json, and fails as docker does.
    cp = shoal("status", env={**bare, "DOCKER_CONTEXT": "nope"}, check=False)
    assert cp.returncode == 1 and "context 'nope' does not exist" in cp.stderr
    cp = shoal("--context", "shoaltest", "-H", node.url, "status", env=bare, check=False)
    assert cp.returncode == 1 and "cannot specify both --host and --context" in cp.stderr


def test_tcp_with_tls_verify(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("shoal-cli")
    srv, cli = tmp_path / "srv", tmp_path / "cli"
    srv.mkdir()
    cli.mkdir()
    ca.cert_pem.write_to_path(str(srv / "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(srv / "both.pem"))
    server.private_key_pem.write_to_path(str(srv / "key.pem"))
    server.cert_chain_pems[0].write_to_path(str(srv / "cert.pem"))
    ca.cert_pem.write_to_path(str(cli / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(cli / "cert.pem"))
    client.private_key_pem.write_to_path(str(cli / "key.pem"))
    port = free_port()
    node = ShoalNode(tmp_path / "node", extra_args=(
        "--api-tcp", f"127.0.0.1:{port}", "--tlsverify", "--tlscacert", str(srv / "ca.pem"),
        "--tlscert", str(srv / "cert.pem"), "--tlskey", str(srv / "key.pem")))
    node.start()
    try:
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        env = {k: v for k, v in node.env.items() if k != "DOCKER_HOST"}
        env.update({"DOCKER_HOST": f"tcp://127.0.0.1:{port}", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cli)})
        assert status_json(node, env)["raft"]["verdict"] == "healthy"
        # Without the client certificate the daemon refuses the handshake.
        bad = tmp_path / "nocert"
        bad.mkdir()
        ca.cert_pem.write_to_path(str(bad / "ca.pem"))
        cp = shoal("status", env={**env, "DOCKER_CERT_PATH": str(bad)}, check=False)
        assert cp.returncode == 1 and "Cannot connect to the Shoal daemon at tcp://127.0.0.1:" in cp.stderr
    finally:
        node.stop()


# --- status, top --------------------------------------------------------------------------------------


def test_status_shows_unplaceable_and_why(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "st-ok", "--replicas", "2")
    create(node, "st-huge", "--reserve-memory", "100T")
    wait_until(lambda: services(status_json(node)).get("st-ok", {}).get("converged"), 30, what="st-ok converged")

    def unplaceable() -> list[dict[str, Any]]:
        return [u for u in status_json(node)["unplaceable"] if u["service"] == "st-huge"]

    un = wait_until(unplaceable, 30, what="st-huge listed as unplaceable")
    assert un[0]["count"] == 1 and un[0]["reason"].startswith("no suitable node (insufficient resources on 1 node")
    st = services(status_json(node))
    assert (st["st-huge"]["state"], st["st-huge"]["running"], st["st-huge"]["desired"]) == ("unplaceable", 0, 1)
    assert (st["st-ok"]["state"], st["st-ok"]["running"]) == ("converged", 2)
    screen = shoal("status", env=node.env).stdout
    assert "Unplaceable" in screen and "no suitable node (insufficient resources on 1 node" in screen
    assert any("st-huge" in line and "0/1" in line and "unplaceable" in line for line in screen.splitlines())


def test_top_once_and_bounded_refreshes(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "top-svc")
    once = shoal("top", "--once", env=node.env).stdout
    assert once.count("shoal top - ") == 1 and "top-svc" in once and "Events" in once
    assert "service create top-svc" in once  # the events of the last minutes
    two = shoal("top", "-n", "2", "--interval", "0.2", env=node.env).stdout
    assert two.count("shoal top - ") == 2


# --- long operations with progress -------------------------------------------------------------------


def test_scale_follows_to_convergence(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "sc-web")
    out = shoal("scale", "sc-web=4", "--timeout", "60", env=node.env).stdout
    assert "sc-web scaled to 4" in out and "sc-web: converged (4/4)" in out
    assert node.docker("service", "ls", "--filter", "name=sc-web", "--format", "{{.Replicas}}").stdout.strip() == "4/4"
    out = shoal("scale", "sc-web=1", "--timeout", "60", env=node.env).stdout
    assert "sc-web: converged (1/1)" in out
    sid = node.docker("service", "inspect", "sc-web", "--format", "{{.ID}}").stdout.strip()
    assert f"{sid[:10]}: converged (1/1)" in shoal("wait", sid[:10], "--timeout", "60", env=node.env).stdout


def test_scale_that_cannot_be_placed_says_why(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "sc-huge", "--reserve-memory", "100T", "--replicas", "0")
    cp = shoal("scale", "sc-huge=2", "--timeout", "3", env=node.env, check=False)
    assert cp.returncode == 1
    assert "sc-huge: not yet: pending: no suitable node (insufficient resources on 1 node" in cp.stdout
    assert "Timed out waiting for scaling" in cp.stderr


def test_scale_refuses_bad_input(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    cp = shoal("scale", "nope", env=node.env, check=False)
    assert cp.returncode == 2 and "expected SERVICE=REPLICAS" in cp.stderr
    cp = shoal("scale", "no-such-service=2", env=node.env, check=False)
    assert cp.returncode == 1 and "Error response from daemon: service no-such-service not found" in cp.stderr


def test_update_wait_and_rollback(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "rb-web", "--replicas", "2", "--update-delay", "0s")
    shoal("wait", "rb-web", "--timeout", "60", env=node.env)
    node.docker("service", "update", "--detach", "--image", "busybox:new", "rb-web")
    out = shoal("wait", "rb-web", "--timeout", "60", env=node.env).stdout
    assert "rb-web: converged (2/2)" in out
    assert image_of(node, "rb-web") == "busybox:new"
    flt = quote(json.dumps({"service": ["rb-web"], "desired-state": ["running"]}))
    tasks = node.api("GET", f"/tasks?filters={flt}")[1]
    assert sorted(t["Spec"]["ContainerSpec"]["Image"] for t in tasks) == ["busybox:new", "busybox:new"]
    out = shoal("rollback", "rb-web", "--timeout", "60", env=node.env).stdout
    assert "rb-web: rollback requested" in out and "rb-web: converged (2/2)" in out
    assert image_of(node, "rb-web") == "busybox:latest"
    upd = json.loads(node.docker("service", "inspect", "rb-web", "--format", "{{json .UpdateStatus}}").stdout)
    assert upd["State"] == "rollback_completed"  # followed to the end, not returned at the request


def test_wait_on_missing_service_fails(shoal_module_node: ShoalNode) -> None:
    cp = shoal("wait", "no-such", "--timeout", "5", env=shoal_module_node.env, check=False)
    assert cp.returncode == 1 and "service no-such not found" in cp.stdout


def test_drain_follows_tasks_leaving(cluster: Cluster) -> None:
    w1, w2 = cluster.add_worker("w1"), cluster.add_worker("w2")
    mgr = cluster.manager
    mgr.docker("service", "create", "--detach", "--name", "dr-web", "--replicas", "4", *SLEEP)
    shoal("wait", "dr-web", "--timeout", "60", env=mgr.env)
    out = shoal("drain", "w1", "--timeout", "90", env=mgr.env).stdout
    assert "w1: availability drain" in out and "w1: drained" in out and "dr-web: converged (4/4)" in out
    w1_id = mgr.docker("node", "inspect", "w1", "--format", "{{.ID}}").stdout.strip()
    tasks = mgr.api("GET", "/tasks?filters=" + quote(json.dumps({"service": ["dr-web"]})))[1]
    live = [t for t in tasks if t["DesiredState"] == "running"]
    assert len(live) == 4 and all(t["NodeID"] != w1_id and t["Status"]["State"] == "running" for t in live)
    assert not w1.command_pids()
    assert len(w2.command_pids()) == 4
    out = shoal("activate", "w1", env=mgr.env).stdout
    assert "w1: availability active" in out
    assert mgr.docker("node", "inspect", "w1", "--format", "{{.Spec.Availability}}").stdout.strip() == "active"


def test_status_on_a_worker_points_at_the_managers(cluster: Cluster) -> None:
    w = cluster.add_worker("w1")
    out = shoal("status", env=w.env).stdout
    assert "This node is not a swarm manager." in out and "swarm active" in out
    assert f"This node is a worker; the swarm's managers are at {cluster.addr}" in out


def test_status_follows_raft_health(tmp_path: Path) -> None:
    # Three managers and two workers, as issue 17's "done when" asks.
    with ManagerCluster(tmp_path, managers=3) as mc:
        for w in ("w1", "w2"):
            mc.join(mc.new_node(w), "worker")
        lead = mc.leader()
        wait_until(lambda: sum(n["state"] == "ready" for n in status_json(lead)["nodes"]) == 5, 30,
                   what="five ready nodes in shoal status")
        lead.docker("service", "create", "--detach", "--name", "spread", "--replicas", "5", *SLEEP)
        shoal("wait", "spread", "--timeout", "60", env=lead.env)
        st = status_json(lead)
        assert st["raft"] == {"managers": 3, "reachable": 3, "leader": lead.hostname, "quorum": 2,
                              "verdict": "healthy"}
        assert sorted((n["name"], n["role"] == "worker") for n in st["nodes"])[-2:] == [("w1", True), ("w2", True)]
        assert sum(n["tasks"] for n in st["nodes"]) == 5
        assert st["raft_member"]["role"] == "leader" and len(st["raft_member"]["voters"]) == 3
        victim = next(n for n in mc.managers() if n is not lead)
        victim.kill9()
        st = wait_until(lambda: (s := status_json(lead))["raft"]["verdict"] == "degraded" and s, 60,
                        what="status to see a manager unreachable")
        assert (st["raft"]["reachable"], st["raft"]["managers"]) == (2, 3)
        roles = {n["name"]: n["role"] for n in st["nodes"]}
        assert roles[victim.hostname] == "unreachable" and roles[lead.hostname] == "leader"
        assert "Raft: degraded; 2/3 managers reachable (quorum 2)" in shoal("status", env=lead.env).stdout


# --- diagnose ------------------------------------------------------------------------------------------


SECRET = "s3cret-payload-Qx7Zk9"
CONFIG = "config-payload-Lm4Wp2"
ENV_SECRET = "env-password-Vn8Rt5"


def test_diagnose_bundle_has_the_state_and_no_secrets(shoal_node: ShoalNode, tmp_path: Path) -> None:
    node = shoal_node
    node.docker("secret", "create", "db-pass", "-", input=SECRET)
    node.docker("config", "create", "app-conf", "-", input=CONFIG)
    node.docker("service", "create", "--detach", "--name", "dg-web", "--secret", "db-pass", "--config", "app-conf",
                "--env", f"DB_PASSWORD={ENV_SECRET}", *SLEEP)
    shoal("wait", "dg-web", "--timeout", "60", env=node.env)
    node.docker("swarm", "update", "--autolock=true")
    unlock = node.docker("swarm", "unlock-key", "-q").stdout.strip()
    tokens = [node.docker("swarm", "join-token", "-q", r).stdout.strip() for r in ("worker", "manager")]
    assert unlock.startswith("SWMKEY-1-") and all(t.startswith("SWMTKN-1-") for t in tokens)

    out = shoal("diagnose", "-o", str(tmp_path / "b.tar.gz"), env=node.env, cwd=tmp_path)
    assert "Wrote" in out.stdout and "not collected" not in out.stderr, out.stderr
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                 if m.isfile()}
    assert {"version.json", "info.json", "swarm.json", "nodes.json", "services.json", "tasks.json", "secrets.json",
            "configs.json", "raft.json", "events.jsonl", "daemon.log", "status.txt", "README.txt"} <= set(files)
    blob = b"\n".join(files.values())
    forbidden = [SECRET, CONFIG, ENV_SECRET, unlock, *tokens, base64.b64encode(SECRET.encode()).decode(),
                 base64.b64encode(CONFIG.encode()).decode(), "PRIVATE KEY"]
    for f in forbidden:
        assert f.encode() not in blob, f"{f!r} is in the bundle"
    # What it is for is there: the objects by name, the Raft member, the events and the daemon's log.
    assert [s["Spec"]["Name"] for s in json.loads(files["secrets.json"])] == ["db-pass"]
    assert [c["Spec"]["Name"] for c in json.loads(files["configs.json"])] == ["app-conf"]
    env = json.loads(files["services.json"])[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert env == ["DB_PASSWORD=<redacted>"]
    assert json.loads(files["raft.json"])["is_leader"] is True
    events = [json.loads(line) for line in files["events.jsonl"].decode().splitlines()]
    assert {("secret", "create"), ("service", "create")} <= {(e["Type"], e["Action"]) for e in events}
    assert b"API listen on" in files["daemon.log"]
    assert b"dg-web" in files["status.txt"]


def test_shoal_log_endpoint(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    status, body = node.api("GET", "/_shoal/log?tail=3")
    assert status == 200 and body["kept"] is True and len(body["lines"]) == 3
    status, body = node.api("GET", "/_shoal/log")
    assert status == 200 and any("API listen on" in line for line in body["lines"])
    assert node.api("GET", "/_shoal/log?tail=0")[1] == {"kept": True, "lines": []}
    for bad in ("-1", "x"):
        status, body = node.api("GET", f"/_shoal/log?tail={bad}")
        assert status == 400 and "invalid tail value" in body["message"], body


def test_wait_does_not_take_a_crash_loop_for_converged(shoal_module_node: ShoalNode) -> None:
    # A global task that keeps failing spends its restart delay as a task with desired state "ready"; the service
    # never converges, even at the moments when no task of it is meant to be running.
    node = shoal_module_node
    node.docker("service", "create", "--detach", "--name", "crash", "--mode", "global", "--restart-delay", "1s",
                "busybox", "sh", "-c", "exit 3")
    cp = shoal("wait", "crash", "--timeout", "6", env=node.env, check=False)
    assert cp.returncode == 1 and "crash: not yet" in cp.stdout and "Timed out" in cp.stderr, cp.stdout
    st = services(status_json(node))["crash"]
    assert not st["converged"]


def test_daemon_with_a_relative_data_dir_runs_networked_tasks(tmp_path: Path) -> None:
    # `shoal daemon --data-dir rel` (the README's first hour): a task on an overlay network enters a namespace
    # bound under the data dir, from a process whose cwd is not the daemon's.
    rel = os.path.relpath(tmp_path / "reldata", Path.cwd())
    node = ShoalNode(tmp_path / "node", extra_args=("--data-dir", rel))
    node.data_dir = tmp_path / "reldata"
    node.start()
    try:
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        node.docker("network", "create", "-d", "overlay", "relnet")
        node.docker("service", "create", "--detach", "--name", "netted", "--network", "relnet", *SLEEP)
        out = shoal("wait", "netted", "--timeout", "60", env=node.env).stdout
        assert "netted: converged (1/1)" in out
    finally:
        node.stop()
