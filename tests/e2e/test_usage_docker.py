"""Usage of containers (docker executor on a private dockerd): the container's cgroup, found through its main
process, gives the CPU and memory `/_shoal/usage` shows; and the engine's own one-shot statistics (the fallback
for a container whose process this host cannot see) parse to the same kind of reading."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest

from shoal.agent.usage import engine_stats_usage
from tests.e2e.shoal_docker import ShoalDocker, swarm_node
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BURN = ("sh", "-c", "while :; do :; done")


@pytest.fixture(scope="module")
def node(dockerd: str, test_image: str) -> Iterator[ShoalDocker]:
    with swarm_node(dockerd, "su", "node1") as n:
        yield n


def usage(node: ShoalDocker) -> dict[str, Any]:
    c = node.client()
    try:
        r = c.api.get(c.api.base_url + "/_shoal/usage")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body
    finally:
        c.close()


def test_a_burning_container_shows_in_usage(node: ShoalDocker, test_image: str, dockerd: str) -> None:
    node.docker("service", "create", "-d", "--no-resolve-image", "--name", "burn", "--limit-memory", "64M",
                "--stop-grace-period", "1s", test_image, *BURN)

    def burning() -> dict[str, Any] | None:
        tasks = [t for t in usage(node)["Tasks"] if t["ServiceName"] == "burn" and (t["CPUs"] or 0) > 0.1]
        return tasks[0] if tasks else None

    task = wait_until(burning, 90, interval=0.5, what="the burning container's CPU in /_shoal/usage")
    assert task is not None
    assert task["Source"] in ("cgroup1", "cgroup2")  # the engine runs on this host: its cgroup is readable
    assert 0 < task["MemoryBytes"] <= 64 << 20

    eng = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        ctr = eng.containers.list(filters={"label": f"com.docker.swarm.task.id={task['ID']}"})
        assert len(ctr) == 1
        stats = eng.api.get(eng.api._url("/containers/{0}/stats", ctr[0].id),
                            params={"stream": "false", "one-shot": "true"}).json()
    finally:
        eng.close()
    reading = engine_stats_usage(stats)
    assert reading is not None and reading.source == "engine"
    assert reading.cpu_seconds is not None and reading.cpu_seconds > 0
    assert reading.memory_bytes is not None and 0 < reading.memory_bytes <= 64 << 20
