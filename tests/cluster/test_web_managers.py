"""The web view on three managers and two workers: a follower's view shows the whole swarm (heartbeat ages from the
leader's dispatcher included), its actions reach the leader, and its Raft health follows a manager going down."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.managers import ManagerCluster, free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.web import CSRF, WebClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class WebManagers(ManagerCluster):
    """Every node with a web view on a port of its own."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, 3)
        self.web_ports: dict[str, int] = {}

    def new_node(self, name: str) -> ShoalNode:
        self.web_ports[name] = free_port()
        self.extra_args = ("--web-addr", f"127.0.0.1:{self.web_ports[name]}")
        return super().new_node(name)

    def web(self, n: ShoalNode) -> WebClient:
        c = WebClient(f"http://127.0.0.1:{self.web_ports[n.hostname]}")
        assert c.login((n.data_dir / "web-token").read_text().strip()) == 302
        return c


def _model(c: WebClient) -> dict[str, Any]:
    status, _, body = c.get("/api/state")
    assert status == 200, body
    return dict(json.loads(body))


def test_a_followers_web_view_of_three_managers_and_two_workers(tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not on the PATH")
    with WebManagers(tmp_path) as cl:
        for name in ("w1", "w2"):
            cl.join(cl.new_node(name), "worker")
        leader = cl.leader()
        follower = next(n for n in cl.live() if n.hostname.startswith("m") and n is not leader)
        other = next(n for n in cl.live() if n.hostname.startswith("m") and n not in (leader, follower))
        web = cl.web(follower)

        def nodes() -> dict[str, dict[str, Any]]:
            return {n["hostname"]: n for n in _model(web)["nodes"]}

        # Every node, its role and leader, and a heartbeat age from the leader's sessions for each.
        wait_until(lambda: len(nodes()) == 5 and all(n["state"] == "ready" and n["heartbeat_age"] is not None
                                                     for n in nodes().values()), 30, what="five ready nodes")
        seen = nodes()
        assert [h for h, n in seen.items() if n["leader"]] == [leader.hostname]
        assert sorted(h for h, n in seen.items() if n["role"] == "manager") == ["m1", "m2", "m3"]
        raft = _model(web)["raft"]
        assert (raft["healthy"], raft["reachable"], raft["quorum"]) == (True, 3, 2)
        assert raft["member"]["is_leader"] is False and raft["member"]["term"] >= 1

        # A service made on the leader with the CLI is seen on the follower, and scaled through it.
        sid = leader.docker("service", "create", "--detach", "--name", "web", "--replicas", "4", "busybox",
                            "sleep", "600").stdout.strip()

        def web_service() -> dict[str, Any]:
            return next(s for s in _model(web)["services"] if s["name"] == "web")

        wait_until(lambda: web_service()["running"] == 4, 60, what="4 running replicas in the follower's view")
        status, _, body = web.post(f"/api/services/{sid}/scale", {"replicas": 6}, headers=CSRF)
        assert status == 200, body
        assert leader.docker("service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}",
                             "web").stdout.strip() == "6"
        wait_until(lambda: web_service()["running"] == 6, 60, what="6 running replicas in the follower's view")

        # An update in progress shows how many tasks it replaced so far.
        leader.docker("service", "update", "--detach", "--force", "--update-delay", "2s", "web")

        def progress() -> str:
            u = web_service()["update"]
            return str(u["progress"]) if u["state"] == "updating" and u["progress"] not in ("", "0/6") else ""

        assert re.fullmatch(r"[1-6]/6", wait_until(progress, 60, what="the update's progress in the view"))

        # A worker's view sends the browser to a manager.
        worker = next(n for n in cl.live() if n.hostname == "w1")
        assert _model(cl.web(worker))["error"] == "this node is a worker: open the web view of a manager"

        # A manager dies: the follower's Raft health shows it unreachable, the quorum still held.
        other.kill9()

        def after() -> bool:
            r = _model(web)["raft"]
            by_host = {m["hostname"]: m["reachability"] for m in r["managers"]}
            return bool(r["reachable"] == 2 and by_host[other.hostname] == "unreachable" and r["healthy"])

        wait_until(after, 60, what=f"{other.hostname} unreachable in the follower's Raft health")

        # Quorum lost: the view says why and still shows this manager's Raft member.
        leader.kill9()

        def no_quorum() -> dict[str, Any]:
            m = _model(web)
            return m if "error" in m else {}

        m = wait_until(no_quorum, 60, what="the follower's view without a quorum")
        assert m["raft_member"]["is_leader"] is False
        assert m["raft_member"]["voters"] and all(isinstance(v, str) for v in m["raft_member"]["voters"])
