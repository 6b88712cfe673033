"""Two Shoal nodes (a manager and a worker that joined it), both `--executor docker` against ONE private dockerd.

The containers of the two nodes live side by side in the same engine and are told apart only by the
`com.shoal.node.id` label: a constrained service lands on the worker alone, a global service has one container
per node (each labelled with its own node), `docker ps` through either node shows the engine's containers,
and `docker swarm leave` on the worker removes the worker's containers only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.shoal_docker import ShoalDocker
from tests.support.managers import free_port
from tests.support.wait import wait_until
from tests.support.workers import join_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NODE_LABEL = "com.shoal.node.id"
SERVICE_LABEL = "com.docker.swarm.service.id"


class Pair:
    def __init__(self, dockerd: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="s2", dir="/tmp"))
        self.addr = f"127.0.0.1:{free_port()}"
        self.mgr = ShoalDocker(self.base / "m", dockerd, hostname="mgr2")
        self.wrk = ShoalDocker(self.base / "w", dockerd, hostname="wrk2")
        self.engine = docker.DockerClient(base_url=dockerd, timeout=60)
        self.ids: dict[str, str] = {}

    def containers(self, **labels: str) -> list[Any]:
        flt = [f"{k}={v}" for k, v in labels.items()]
        # One list call, no per-container inspect: containers.list() inspects each one and fails when the
        # orchestrator removes a container in between (its history trimming does, at any moment).
        return [_Listed(self.engine, c) for c in self.engine.api.containers(all=True, filters={"label": flt})]

    def running_nodes(self, service_id: str) -> list[str]:
        """The com.shoal.node.id of each running container of the service, sorted."""
        return sorted(c.labels.get(NODE_LABEL, "") for c in self.containers(**{SERVICE_LABEL: service_id})
                      if c.status == "running")

    def close(self) -> None:
        for n in (self.wrk, self.mgr):
            if n.alive():
                n.docker("swarm", "leave", "--force", check=False)
            n.stop()
        for nid in self.ids.values():
            for c in self.containers(**{NODE_LABEL: nid}):
                c.remove(force=True)
        self.engine.close()
        shutil.rmtree(self.base, ignore_errors=True)


class _Listed:
    """A container as the engine's list shows it (labels, state), removable."""

    def __init__(self, engine: Any, raw: dict[str, Any]) -> None:
        self._engine = engine
        self.id: str = raw["Id"]
        self.labels: dict[str, str] = raw.get("Labels") or {}
        self.status: str = raw.get("State", "")

    def remove(self, force: bool = False) -> None:
        try:
            self._engine.api.remove_container(self.id, force=force)
        except docker.errors.NotFound:
            pass


@pytest.fixture
def pair(dockerd: str, test_image: str) -> Iterator[Pair]:
    p = Pair(dockerd)
    try:
        p.mgr.start()
        p.wrk.start()
        p.mgr.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", p.addr)
        p.ids["mgr"] = p.mgr.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        p.mgr.docker("swarm", "update", "--dispatcher-heartbeat", "1s")
        p.ids["wrk"] = join_worker(p.mgr, p.wrk, p.addr)
        assert p.ids["wrk"] != p.ids["mgr"]
        yield p
    finally:
        p.close()


def test_two_nodes_share_one_engine(pair: Pair, test_image: str) -> None:
    m, w, ids = pair.mgr, pair.wrk, pair.ids

    # --- docker node ls from the stock CLI: two Ready nodes with their engine version
    def ready_rows() -> dict[str, dict[str, Any]] | None:
        rows = [json.loads(line) for line in m.docker("node", "ls", "--format", "{{json .}}").stdout.splitlines()]
        by_host = {r["Hostname"]: r for r in rows}
        if set(by_host) == {"mgr2", "wrk2"} and all(r["Status"] == "Ready" for r in rows):
            return by_host
        return None

    rows = wait_until(ready_rows, 20, what="two Ready nodes")
    assert rows["mgr2"]["ManagerStatus"] == "Leader" and rows["wrk2"]["ManagerStatus"] == ""
    assert rows["mgr2"]["ID"] == ids["mgr"] and rows["wrk2"]["ID"] == ids["wrk"]
    assert rows["mgr2"]["EngineVersion"] and rows["wrk2"]["EngineVersion"]

    # --- a constrained service lands on the worker only
    m.docker("node", "update", "--label-add", "side=w", "wrk2")
    only_w = m.docker("service", "create", "-d", "--no-resolve-image", "--name", "onlyw", "--replicas", "2",
                      "--stop-grace-period", "1s", "--constraint", "node.labels.side==w",
                      test_image, "sleep", "600").stdout.strip()
    assert wait_until(lambda: pair.running_nodes(only_w) == [ids["wrk"]] * 2, 30,
                      what="two onlyw containers on the worker")

    # --- a global service: one container per node, each labelled with its own node
    glob = m.docker("service", "create", "-d", "--no-resolve-image", "--name", "everywhere", "--mode", "global",
                    "--stop-grace-period", "1s", test_image, "sleep", "600").stdout.strip()
    assert wait_until(lambda: pair.running_nodes(glob) == sorted([ids["mgr"], ids["wrk"]]), 30,
                      what="one global container per node")
    for c in pair.containers(**{SERVICE_LABEL: glob}):
        assert c.labels["com.docker.swarm.node.id"] == c.labels[NODE_LABEL]

    # --- docker ps through either node's socket: the same engine, so both nodes' containers
    for n in (m, w):
        out = n.docker("ps", "--no-trunc", "--format", "{{.ID}} {{.Label \"com.shoal.node.id\"}}").stdout
        seen = {line.split()[1] for line in out.splitlines() if len(line.split()) == 2}
        assert {ids["mgr"], ids["wrk"]} <= seen, out

    # --- the worker leaves: its containers go, the manager's stay
    w.docker("swarm", "leave")
    assert wait_until(lambda: not pair.containers(**{NODE_LABEL: ids["wrk"]}), 30,
                      what="the worker's containers removed")
    assert pair.running_nodes(glob) == [ids["mgr"]]
    mgr_c = pair.containers(**{NODE_LABEL: ids["mgr"], SERVICE_LABEL: glob})
    assert len(mgr_c) == 1 and mgr_c[0].status == "running"
