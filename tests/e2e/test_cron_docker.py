"""Cron jobs with the docker executor: a service with swarm-cronjob's labels, created with the stock CLI on a
Shoal node over a private dockerd, runs one container per tick; how long after its tick each container started
(the engine's State.StartedAt) is printed, never asserted."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import docker
import pytest

from tests.e2e.shoal_docker import ShoalDocker
from tests.support.managers import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def swarm(dockerd: str, test_image: str) -> Iterator[tuple[ShoalDocker, docker.DockerClient]]:
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    base = Path(tempfile.mkdtemp(prefix="sdc", dir="/tmp"))
    node = ShoalDocker(base, dockerd, hostname="cron1")
    node.start()
    nid = ""
    try:
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        nid = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        yield node, engine
    finally:
        node.docker("swarm", "leave", "--force", check=False)
        node.stop()
        if nid:
            for c in engine.containers.list(all=True, filters={"label": f"com.shoal.node.id={nid}"}):
                c.remove(force=True)
        engine.close()


def _started(c: docker.models.containers.Container) -> float:
    raw = c.attrs["State"]["StartedAt"]  # RFC 3339 with nanoseconds
    head, _, frac = raw.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def test_cron_service_runs_a_container_per_tick(swarm: tuple[ShoalDocker, docker.DockerClient],
                                                test_image: str) -> None:
    node, engine = swarm
    node.docker("service", "create", "--detach", "--name", "cronjob", "--replicas", "0", "--restart-condition",
                "none", "--label", "swarm.cronjob.enable=true", "--label", "swarm.cronjob.schedule=*/2 * * * * *",
                "--label", "swarm.cronjob.skip-running=true", test_image, "true")
    sid = node.docker("service", "inspect", "--format", "{{.ID}}", "cronjob").stdout.strip()

    def exited() -> list[docker.models.containers.Container]:
        cs = [engine.containers.get(s["Id"]) for s in
              engine.api.containers(all=True, filters={"label": f"com.docker.swarm.service.id={sid}"})]
        return [c for c in cs if c.status == "exited"]

    done = wait_until(lambda: (lambda cs: cs if len(cs) >= 4 else None)(exited()), 60, what="four runs")
    assert all(c.attrs["State"]["ExitCode"] == 0 for c in done)
    starts = sorted(_started(c) for c in done)
    ticks = [int(s) - int(s) % 2 for s in starts]
    delays = [s - t for s, t in zip(starts, ticks, strict=True)]
    print(f"\ndocker executor: container started after its tick, {len(delays)} runs (s): min {min(delays):.3f} "
          f"median {statistics.median(delays):.3f} max {max(delays):.3f}")
    assert len(set(ticks)) == len(ticks), ticks  # one container per tick
