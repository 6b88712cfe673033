"""Service lifecycle scenarios written once and run on both executors, with the stock `docker` CLI:
`shoal daemon --executor process` (no Docker Engine) and `--executor docker` on a real, private dockerd (the
`docker` parameter is an e2e test). Rolling updates (start-first with parallelism and delay, automatic rollback),
a replicated job, and `service logs -f`.

What only one executor has stays in its own module: tests/cluster/test_lifecycle_process.py (pause, failure
ratio, restart policy, health commands, logs options, events, kill -9 mid-update) and
tests/e2e/test_lifecycle_docker.py (an image's HEALTHCHECK, events on containers).

One node per executor serves the whole module (distinct service names); the docker node's engine is shared
with other xdist workers, so nothing here looks at the engine as a whole.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster.test_cli_process import filters, go_time
from tests.e2e.shoal_docker import ShoalDocker, swarm_node
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(180)

SLEEP = ("sleep", "600")


@dataclass
class Side:
    """A swarm-inited node of one executor, seen through the CLI and the Engine API."""

    node: ShoalNode | ShoalDocker
    image: str
    create_args: tuple[str, ...]  # what `service create` needs on this executor

    @property
    def env(self) -> dict[str, str]:
        return self.node.env if isinstance(self.node, ShoalNode) else self.node.env()

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.node.docker(*args, check=check)

    def create(self, name: str, *args: str, cmd: tuple[str, ...] = SLEEP) -> str:
        return self.docker("service", "create", "--detach", "--name", name, *self.create_args, *args,
                           self.image, *cmd).stdout.strip()

    def tasks(self, service: str) -> list[dict[str, Any]]:
        if isinstance(self.node, ShoalNode):
            status, body = self.node.api("GET", f"/v1.41/tasks?filters={filters(service=service)}")
            assert status == 200, body
            return list(body)
        c = self.node.client()
        try:
            return list(c.api.tasks(filters={"service": service}))
        finally:
            c.close()

    def running(self, service: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks(service) if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]

    def wait_running(self, service: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        def ok() -> list[dict[str, Any]] | None:
            ts = self.running(service)
            live = [t for t in self.tasks(service) if t["DesiredState"] == "running"]
            return ts if len(ts) == n and len(live) == n else None

        return wait_until(ok, timeout, what=f"{n} running tasks of {service}")

    def inspect(self, service: str) -> dict[str, Any]:
        (svc,) = json.loads(self.docker("service", "inspect", service).stdout)
        return dict(svc)

    def update_state(self, service: str) -> tuple[str, str]:
        st = self.inspect(service).get("UpdateStatus") or {}
        return st.get("State", ""), st.get("Message", "")

    def wait_state(self, service: str, state: str, timeout: float = 60) -> str:
        def ok() -> str | None:
            st, msg = self.update_state(service)
            return msg if st == state else None

        try:
            return wait_until(ok, timeout, what=f"{service} UpdateStatus {state}")
        except AssertionError as e:
            raise AssertionError(f"{e}\nnow: {self.update_state(service)}\n{self.node.log_tail(30)}") from None


@pytest.fixture(scope="module", params=["process", pytest.param("docker", marks=pytest.mark.e2e)])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "process":
        yield Side(request.getfixturevalue("shoal_module_node"), "busybox", ())
        return
    dockerd, image = request.getfixturevalue("dockerd"), request.getfixturevalue("test_image")
    with swarm_node(dockerd, "slx", "node1") as n:
        yield Side(n, image, ("--no-resolve-image", "--stop-grace-period", "1s"))


def args_of(t: dict[str, Any]) -> list[str]:
    return list(t["Spec"]["ContainerSpec"].get("Args") or [])


# --- rolling updates ------------------------------------------------------------------------------


def test_start_first_parallelism_two_with_delay(side: Side) -> None:
    side.create("sf", "--replicas", "4", "--update-order", "start-first", "--update-parallelism", "2",
                "--update-delay", "1s", "--update-monitor", "300ms")
    old = {t["ID"] for t in side.wait_running("sf", 4)}
    side.docker("service", "update", "--detach", "--args", "sleep 601", "sf")
    # start-first: observed from task states all along the update, never fewer than 4 running
    fewest = 4
    deadline = time.monotonic() + 60
    while side.update_state("sf")[0] != "completed" and time.monotonic() < deadline:
        fewest = min(fewest, sum(t["Status"]["State"] == "running" for t in side.tasks("sf")))
    assert fewest == 4
    side.wait_state("sf", "completed")
    side.wait_running("sf", 4)
    ts = side.tasks("sf")
    new = sorted((t for t in ts if t["ID"] not in old), key=lambda t: go_time(t["CreatedAt"]))
    assert len(new) == 4 and all(args_of(t) == ["sleep", "601"] for t in new)
    created = [go_time(t["CreatedAt"]) for t in new]
    # two batches of two: made together, the second at least the delay after the first batch ran
    assert created[1] - created[0] < 0.5 and created[3] - created[2] < 0.5, created
    assert created[2] - created[1] >= 1.0, created
    assert all(t["DesiredState"] == "shutdown" for t in ts if t["ID"] in old)
    side.docker("service", "rm", "sf")


def test_failing_update_rolls_back_by_itself(side: Side) -> None:
    side.create("rb", "--replicas", "2", "--update-failure-action", "rollback", "--update-monitor", "2s",
                "--rollback-monitor", "500ms", "--restart-delay", "200ms")
    before = side.inspect("rb")["Spec"]
    side.wait_running("rb", 2)
    side.docker("service", "update", "--detach", "--args", "sh -c 'exit 1'", "rb")
    assert side.wait_state("rb", "rollback_completed") == "rollback completed"
    assert side.inspect("rb")["Spec"] == before
    ts = side.wait_running("rb", 2)
    assert all(args_of(t) == list(SLEEP) for t in ts)
    bad = [t for t in side.tasks("rb") if args_of(t) == ["sh", "-c", "exit 1"]]
    failed = [t for t in bad if t["Status"]["State"] == "failed"]
    assert failed and all(t["Status"]["Err"] == "task: non-zero exit (1)" for t in failed)
    assert all(t["DesiredState"] == "shutdown" and t["Status"]["State"] in ("failed", "shutdown") for t in bad)
    # the automatic rollback consumed the previous spec: rolling back the rollback is refused, as dockerd
    cp = side.docker("service", "rollback", "--detach", "rb", check=False)
    assert cp.returncode != 0
    assert "does not have a previous spec" in cp.stderr, cp.stderr
    assert side.update_state("rb")[0] == "rollback_completed"
    side.docker("service", "rm", "rb")


# --- jobs and logs --------------------------------------------------------------------------------


def test_replicated_job_five_completions_two_at_a_time(side: Side) -> None:
    side.create("job", "--mode", "replicated-job", "--replicas", "5", "--max-concurrent", "2",
                cmd=("sh", "-c", "sleep 0.6"))

    def completed(it: int | None = None) -> list[dict[str, Any]]:
        return [t for t in side.tasks("job") if t["Status"]["State"] == "complete"
                and (it is None or t.get("JobIteration", {}).get("Index", 0) == it)]

    wait_until(lambda: len(completed()) == 5, 60, what="5 completions")
    ts = side.tasks("job")
    assert len(ts) == 5 and all(t["DesiredState"] == "complete" for t in ts)
    # never more than two at once: sort start/end times
    spans = sorted((go_time(t["Status"]["ContainerStatus"].get("StartedAt") or t["CreatedAt"]),
                    go_time(t["Status"]["Timestamp"])) for t in ts)
    for i, (start, _) in enumerate(spans):
        assert sum(1 for s, e in spans[:i] if e > start) <= 1, spans
    ps = side.docker("service", "ps", "job", "--format", "{{.DesiredState}} {{.CurrentState}}").stdout
    assert all(line.startswith("Complete Complete") for line in ps.splitlines()), ps
    ls = side.docker("service", "ls", "--filter", "name=job", "--format", "{{.Mode}} {{.Replicas}}").stdout.strip()
    assert ls == "replicated job 0/2 (5/5 completed)", ls
    # --force runs it again as a new iteration; the old completions stay visible
    side.docker("service", "update", "--detach", "--force", "job")
    wait_until(lambda: len(completed(1)) == 5, 60, what="5 completions of the second run")
    assert len(completed()) == 10
    side.docker("service", "rm", "job")


def test_service_logs_follow_ends_when_service_removed(side: Side) -> None:
    side.create("fol", "--replicas", "2", cmd=("sh", "-c", "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; "
                                               "done"))
    side.wait_running("fol", 2)
    proc = subprocess.Popen(["docker", "service", "logs", "-f", "fol"], env=side.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        slots: set[str] = set()
        deadline = time.monotonic() + 30
        while len(slots) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if " | tick" in line:
                slots.add(line.split(".")[1])
        assert slots == {"1", "2"}  # both replicas followed
        side.docker("service", "rm", "fol")
        rc = proc.wait(timeout=30)  # the stream ends with the service
        assert rc == 0, (rc, proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
