"""Service lifecycle with the stock `docker` CLI against `shoal daemon --executor docker` on a real, private
dockerd: the most important cases of tests/cluster/test_lifecycle_process.py, with containers.

One Shoal node serves the whole module (distinct service names); engine-side checks filter on the
service ID, since other xdist workers share the dockerd.
"""

from __future__ import annotations

import io
import json
import subprocess
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


def args_of(t: dict[str, Any]) -> list[str]:
    return list(t["Spec"]["ContainerSpec"].get("Args") or [])


def go_time(s: str) -> float:
    from tests.cluster.test_cli_process import go_time as gt

    return gt(s)


# --- updates ------------------------------------------------------------------------------------------


def test_start_first_parallelism_two_with_delay(node: ShoalDocker, test_image: str) -> None:
    create(node, test_image, "dsf", "--replicas", "4", "--update-order", "start-first", "--update-parallelism", "2",
           "--update-delay", "1s", "--update-monitor", "300ms")
    old = {t["ID"] for t in wait_running(node, "dsf", 4)}
    node.docker("service", "update", "-d", "--args", "sleep 601", "dsf")
    # start-first: observed from task states all along the update, never fewer than 4 running
    fewest = 4
    deadline = time.monotonic() + 60
    while update_state(node, "dsf")[0] != "completed" and time.monotonic() < deadline:
        fewest = min(fewest, sum(t["Status"]["State"] == "running" for t in api_tasks(node, "dsf")))
    assert fewest == 4
    wait_state(node, "dsf", "completed")
    wait_running(node, "dsf", 4)
    ts = api_tasks(node, "dsf")
    new = sorted((t for t in ts if t["ID"] not in old), key=lambda t: go_time(t["CreatedAt"]))
    assert len(new) == 4 and all(args_of(t) == ["sleep", "601"] for t in new)
    created = [go_time(t["CreatedAt"]) for t in new]
    assert created[1] - created[0] < 0.5 and created[3] - created[2] < 0.5, created
    assert created[2] - created[1] >= 1.0, created
    node.docker("service", "rm", "dsf")


def test_failing_update_rolls_back_by_itself(node: ShoalDocker, test_image: str) -> None:
    create(node, test_image, "drb", "--replicas", "2", "--update-failure-action", "rollback",
           "--update-monitor", "2s", "--rollback-monitor", "500ms", "--restart-delay", "200ms")
    wait_running(node, "drb", 2)
    before = json.loads(node.docker("service", "inspect", "drb").stdout)[0]["Spec"]
    node.docker("service", "update", "-d", "--args", "sh -c 'exit 1'", "drb")
    assert wait_state(node, "drb", "rollback_completed") == "rollback completed"
    assert json.loads(node.docker("service", "inspect", "drb").stdout)[0]["Spec"] == before
    ts = wait_running(node, "drb", 2)
    assert all(args_of(t) == ["sleep", "600"] for t in ts)
    failed = [t for t in api_tasks(node, "drb") if t["Status"]["State"] == "failed"]
    assert failed and all(t["Status"]["Err"] == "task: non-zero exit (1)" for t in failed)
    cp = node.docker("service", "rollback", "-d", "drb", check=False)
    assert cp.returncode != 0 and "does not have a previous spec" in cp.stderr, cp.stderr
    node.docker("service", "rm", "drb")


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


# --- jobs, logs, events ---------------------------------------------------------------------------------


def test_replicated_job_five_completions_two_at_a_time(node: ShoalDocker, test_image: str) -> None:
    create(node, test_image, "djob", "--mode", "replicated-job", "--replicas", "5", "--max-concurrent", "2",
           cmd=("sh", "-c", "sleep 0.5"))
    wait_until(lambda: sum(t["Status"]["State"] == "complete" for t in api_tasks(node, "djob")) == 5, 60,
               what="5 completions")
    ts = api_tasks(node, "djob")
    assert len(ts) == 5 and all(t["DesiredState"] == "complete" for t in ts)
    ps = node.docker("service", "ps", "djob", "--format", "{{.DesiredState}} {{.CurrentState}}").stdout
    assert all(line.startswith("Complete Complete") for line in ps.splitlines()), ps
    ls = node.docker("service", "ls", "--filter", "name=djob", "--format", "{{.Replicas}}").stdout.strip()
    assert ls == "0/2 (5/5 completed)", ls
    node.docker("service", "rm", "djob")


def test_service_logs_follow_ends_when_service_removed(node: ShoalDocker, test_image: str) -> None:
    create(node, test_image, "dfol", "--replicas", "2",
           cmd=("sh", "-c", "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done"))
    wait_running(node, "dfol", 2)
    proc = subprocess.Popen(["docker", "service", "logs", "-f", "dfol"], env=node.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        slots: set[str] = set()
        deadline = time.monotonic() + 30
        while len(slots) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if " | tick" in line:
                slots.add(line.split(".")[1])
        assert slots == {"1", "2"}
        node.docker("service", "rm", "dfol")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
