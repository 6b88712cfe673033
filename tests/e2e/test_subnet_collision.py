"""Overlay subnets and the engine's own networks, with the docker executor on a real dockerd (an overlay becomes
an engine bridge network with the overlay's subnet, and the engine refuses one that overlaps another of its
networks):

- the node reports the subnets its engine's networks and its host's routes take, and the manager allocates
  overlay subnets around them: an engine network holding the subnet Shoal would pick first does not stop a
  service on a new overlay;
- an overlay whose subnet the engine refuses anyway (given by the user) rejects the task with the engine's
  error, so the orchestrator replaces it, with one log line per failure and no traceback.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.e2e.shoal_docker import ShoalDocker, swarm_node
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

POOL = "10.231.0.0/16"  # this test's address pool: the first overlay subnet Shoal would pick is its first /24
FIRST = "10.231.0.0/24"
CLASH = "10.232.5.0/24"


@pytest.fixture
def engine(dockerd: str) -> Iterator[docker.DockerClient]:
    c = docker.DockerClient(base_url=dockerd, timeout=60)
    made: list[Any] = []
    c.made = made  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        for net in made:
            for ctr in c.api.containers(all=True, filters={"network": net.id}):
                c.api.remove_container(ctr["Id"], force=True)
            net.remove()
        c.close()


def engine_network(engine: docker.DockerClient, name: str, subnet: str) -> None:
    """A network on the engine that is not Shoal's (a compose project's, say)."""
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
    engine.made.append(engine.networks.create(name, driver="bridge", ipam=ipam))  # type: ignore[attr-defined]


@pytest.fixture
def node(dockerd: str, test_image: str, engine: docker.DockerClient) -> Iterator[ShoalDocker]:
    engine_network(engine, "compose_default", FIRST)  # there before the node describes itself
    with swarm_node(dockerd, "sc", "subnode", init_args=("--default-addr-pool", POOL),
                    extra_args=("--dns-upstream", "none")) as n:
        # The agent has registered its description (with what its engine routes) once the engine shows.
        wait_until(lambda: n.docker("node", "inspect", "self", "--format",
                                    "{{.Description.Engine.EngineVersion}}").stdout.strip(), 30,
                   what="the node's description registered")
        yield n


def tasks(n: ShoalDocker, service: str) -> list[dict[str, Any]]:
    """The service's tasks (one trimmed from the history between the listing and its inspect is left out)."""
    ids = n.docker("service", "ps", "-q", "--no-trunc", service).stdout.split()
    found = [n.docker("inspect", "--type", "task", t, check=False) for t in ids]
    return [json.loads(r.stdout)[0] for r in found if r.returncode == 0]


def test_overlay_subnets_avoid_the_engines_networks(node: ShoalDocker, test_image: str) -> None:
    n = node
    n.docker("network", "create", "-d", "overlay", "appnet")
    subnet = json.loads(n.docker("network", "inspect", "appnet").stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    assert ipaddress.ip_network(subnet).subnet_of(ipaddress.ip_network(POOL))
    assert not ipaddress.ip_network(subnet).overlaps(ipaddress.ip_network(FIRST)), subnet
    n.docker("service", "create", "--detach", "--name", "app", "--network", "appnet", "--no-resolve-image",
             test_image, "sleep", "3600")
    wait_until(lambda: any(t["Status"]["State"] == "running" for t in tasks(n, "app")), 90,
               what="the service's task running on the overlay")
    # The network agent holds a running container's namespace by a handle of its own, and lets the handle
    # of an ended one go (tests/net/test_netns_handles.py has the pid reuse this guards against).
    handles = n.data_dir / "net" / "ns"
    (app,) = [t["ID"] for t in tasks(n, "app") if t["Status"]["State"] == "running"]
    assert wait_until(lambda: os.path.ismount(handles / f"c-{app}"), 30, what="the running task's handle")
    gate = n.base / "gate"  # the job ends once the test has seen its handle
    gate.mkdir()
    n.docker("service", "create", "--detach", "--name", "job", "--mode", "replicated-job", "--network", "appnet",
             "--mount", f"type=bind,src={gate},dst=/gate", "--no-resolve-image", test_image,
             "sh", "-c", "until [ -e /gate/go ]; do sleep 0.1; done")
    def job_running() -> list[str]:
        ts = tasks(n, "job")
        assert any(t["Status"]["State"] == "running" for t in ts), [t["Status"] for t in ts]
        return [t["ID"] for t in ts if t["Status"]["State"] == "running"]

    (job,) = wait_until(job_running, 60, what="the job's task running")
    assert wait_until(lambda: os.path.ismount(handles / f"c-{job}"), 30, what="the job's handle")
    (gate / "go").touch()
    wait_until(lambda: [t["ID"] for t in tasks(n, "job") if t["Status"]["State"] == "complete"], 90,
               what="the job's task complete")
    assert wait_until(lambda: not (handles / f"c-{job}").exists(), 30, what="the ended task's handle gone")
    n.stop()  # a stopped daemon keeps no namespace alive (the next one holds the running ones again)
    assert not os.path.ismount(handles / f"c-{app}")


def test_a_task_the_engine_cannot_attach_is_rejected_with_its_error(node: ShoalDocker, engine: docker.DockerClient,
                                                                   test_image: str) -> None:
    n = node
    engine_network(engine, "leftover", CLASH)  # after the node described itself: only the engine knows
    n.docker("network", "create", "-d", "overlay", "--subnet", CLASH, "clash")
    n.docker("service", "create", "--detach", "--name", "stuck", "--network", "clash", "--no-resolve-image",
             test_image, "sleep", "3600")

    def rejected() -> list[dict[str, Any]]:
        return [t for t in tasks(n, "stuck") if t["Status"]["State"] == "rejected"]

    # Rejected, and replaced by the orchestrator (a second task is made and rejected in turn).
    done = wait_until(lambda: len(rejected()) >= 2 and rejected(), 90, what="two rejected tasks")
    for t in done:
        assert "overlaps" in t["Status"]["Err"], t["Status"]
    log = n.log_tail(200_000)
    assert "Traceback" not in log, log[-4000:]
    lines = [ln for ln in log.splitlines() if "overlaps" in ln]
    for t in done:  # one line per failure
        assert sum(t["ID"] in ln for ln in lines) == 1, "\n".join(lines)
    assert all(any(t["ID"] in ln for t in tasks(n, "stuck")) or "cannot attach" in ln for ln in lines), lines
