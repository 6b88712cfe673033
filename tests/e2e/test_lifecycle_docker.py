"""Service lifecycle with the stock `docker` CLI against `shoal daemon --executor docker` on a real, private
dockerd, where containers differ from processes: an image's HEALTHCHECK, and events. The scenarios both executors
share (rolling updates, rollback, jobs, `service logs -f`) are tests/cluster/test_lifecycle_executors.py.

One Shoal node serves the whole module (distinct service names); engine-side checks filter on the
service ID, since other xdist workers share the dockerd.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.e2e.shoal_docker import ShoalDocker, swarm_node
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def node(dockerd: str, test_image: str) -> Iterator[ShoalDocker]:
    with swarm_node(dockerd, "sl", "node1") as n:
        yield n


def create(node: ShoalDocker, image: str, name: str, *args: str, cmd: tuple[str, ...] = ("sleep", "600")) -> str:
    return node.docker("service", "create", "-d", "--no-resolve-image", "--name", name, "--stop-grace-period", "1s",
                       *args, image, *cmd).stdout.strip()


def api_tasks(node: ShoalDocker, name: str) -> list[dict[str, Any]]:
    c = node.client()
    try:
        return list(c.api.tasks(filters={"service": name}))
    finally:
        c.close()


def running(node: ShoalDocker, name: str) -> list[dict[str, Any]]:
    return [t for t in api_tasks(node, name) if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]


def wait_running(node: ShoalDocker, name: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    def ok() -> list[dict[str, Any]] | None:
        ts = running(node, name)
        live = [t for t in api_tasks(node, name) if t["DesiredState"] == "running"]
        return ts if len(ts) == n and len(live) == n else None

    return wait_until(ok, timeout, what=f"{n} running tasks of {name}")


def update_state(node: ShoalDocker, name: str) -> tuple[str, str]:
    svc = json.loads(node.docker("service", "inspect", name).stdout)[0]
    st = svc.get("UpdateStatus") or {}
    return st.get("State", ""), st.get("Message", "")


def wait_state(node: ShoalDocker, name: str, state: str, timeout: float = 60) -> str:
    return wait_until(lambda: (m := update_state(node, name))[0] == state and m[1], timeout,
                      what=f"{name} UpdateStatus {state}")


def go_time(s: str) -> float:
    from tests.cluster.test_cli_process import go_time as gt

    return gt(s)


# --- health checks ------------------------------------------------------------------------------------


def test_image_healthcheck_gates_running(node: ShoalDocker, test_image: str, dockerd: str) -> None:
    """An image HEALTHCHECK (no --health-cmd): the task runs only once healthy; --no-healthcheck skips it."""
    eng = docker.DockerClient(base_url=dockerd, timeout=60)
    tag = "shoal-test-health:1"
    try:
        df = f"FROM {test_image}\nHEALTHCHECK --interval=300ms --retries=100 CMD test -e /tmp/ok\n"
        eng.images.build(fileobj=io.BytesIO(df.encode()), tag=tag, rm=True)
    finally:
        eng.close()
    create(node, tag, "dhc", cmd=("sh", "-c", "sleep 2; touch /tmp/ok; exec sleep 600"))
    wait_until(lambda: any(t["Status"]["State"] == "starting" for t in api_tasks(node, "dhc")), 30,
               what="the task starting")
    assert not running(node, "dhc")
    (t,) = wait_running(node, "dhc", 1, timeout=30)
    started = go_time(t["Status"]["Timestamp"]) - go_time(t["CreatedAt"])
    assert started >= 1.5, started  # running only once the image's health check passed
    node.docker("service", "update", "-d", "--no-healthcheck", "--args", "sleep 600", "dhc")
    wait_state(node, "dhc", "completed")
    wait_running(node, "dhc", 1)
    node.docker("service", "rm", "dhc")


# --- events -------------------------------------------------------------------------------------------


def test_events_since_replay(node: ShoalDocker, test_image: str) -> None:
    since = time.time() - 1
    sid = create(node, test_image, "dev")
    node.docker("service", "scale", "-d", "dev=2")
    node.docker("service", "rm", "dev")
    until = time.time() + 0.5
    wait_until(lambda: time.time() > until, 5, what="until to pass")
    cp = node.docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--filter", f"service={sid}",
                     "--format", "{{json .}}", timeout=20)
    evs = [json.loads(x) for x in cp.stdout.splitlines() if x.strip()]
    assert [e["Action"] for e in evs] == ["create", "update", "remove"], evs
    assert evs[1]["Actor"]["Attributes"] == {"name": "dev", "replicas.old": "1", "replicas.new": "2"}
    assert all(e["Type"] == "service" and e["scope"] == "swarm" for e in evs)
