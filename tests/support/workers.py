"""Workers joining a manager with the stock `docker swarm join`, and a cluster of one manager and such workers.

`join_worker(manager, worker, addr)` is the join every multi-node test does: the manager's worker token, `docker
swarm join` on the worker, dockerd's answer checked; it returns the worker's node ID. It takes any node with a
`.docker(*args)` running the stock CLI against it (`ShoalNode`, process executor; `ShoalDocker`, docker executor).

`Cluster(base)` is one manager (`mgr`, drained, so every task lands on a worker, the heartbeat period 1 s so a dead
worker is noticed within ~3 s) listening on a free port, and workers added with `add_worker(name)`. The `cluster`
fixture of tests/cluster gives one started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Protocol

from tests.support.managers import WORKER_JOINED, free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

SLEEP = ("sleep", "3600")  # a task command that outlives any test


class CLINode(Protocol):
    def docker(self, *args: str, check: bool = ..., timeout: float = ...) -> subprocess.CompletedProcess[str]: ...


def join_worker(manager: CLINode, worker: CLINode, addr: str, *args: str) -> str:
    """Join `worker` to the swarm of `manager` (listening on `addr`) as a worker; its node ID. `args` go to
    `docker swarm join` (`--advertise-addr`, `--listen-addr`)."""
    token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    out = worker.docker("swarm", "join", "--token", token, *args, addr).stdout
    assert WORKER_JOINED in out, out
    node_id = worker.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    assert node_id, "the joined worker has no node ID"
    return node_id


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.manager = ShoalNode(base / "mgr", hostname="mgr")
        self.workers: dict[str, ShoalNode] = {}

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Cluster:
        self.manager.start()
        self.manager.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", self.addr,
                            "--availability", "drain")
        self.manager.docker("swarm", "update", "--dispatcher-heartbeat", "1s")
        return self

    def token(self) -> str:
        return self.manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()

    def add_worker(self, name: str, join: bool = True) -> ShoalNode:
        """A worker started in its own directory; with `join`, joined and seen ready by the manager."""
        w = ShoalNode(self.base / name, hostname=name).start()
        self.workers[name] = w
        if join:
            join_worker(self.manager, w, self.addr)
            wait_until(lambda: self.node_state(name) == "ready", 20, what=f"{name} to be ready")
        return w

    def stop(self) -> None:
        for n in [*self.workers.values(), self.manager]:
            if n.proc is not None and n.proc.poll() is None:
                os.kill(n.proc.pid, signal.SIGCONT)  # a test may have frozen it (SIGSTOP)
            n.stop()

    def nodes(self) -> list[dict[str, Any]]:
        status, body = self.manager.api("GET", "/v1.47/nodes")
        assert status == 200, body
        return list(body)

    def node(self, hostname: str) -> dict[str, Any] | None:
        for n in self.nodes():
            if n["Description"]["Hostname"] == hostname:
                return n
        return None

    def node_state(self, hostname: str) -> str:
        n = self.node(hostname)
        return n["Status"]["State"] if n else ""

    def node_id(self, hostname: str) -> str:
        n = self.node(hostname)
        assert n is not None
        return str(n["ID"])

    def tasks(self, service: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        q = quote(json.dumps({"service": [service]}))
        status, body = self.manager.api("GET", f"/v1.47/tasks?filters={q}")
        assert status == 200, body
        return list(body)

    def running(self, service: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks(service)
                if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]

    def placement(self, service: str) -> dict[str, int]:
        """hostname -> number of running tasks of the service."""
        names = {n["ID"]: n["Description"]["Hostname"] for n in self.nodes()}
        out: dict[str, int] = {}
        for t in self.running(service):
            h = names.get(t["NodeID"], t["NodeID"])
            out[h] = out.get(h, 0) + 1
        return out
