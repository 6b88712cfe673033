"""Known differences from dockerd (issue 16) on a docker-executor node, with real containers, the stock CLI and
docker-py. Expected answers are what a private dockerd 20.10 in swarm mode gave for the same calls."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.types import RestartPolicy

from tests.e2e.shoal_docker import ShoalDocker
from tests.support.managers import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def node(dockerd: str, test_image: str) -> Iterator[ShoalDocker]:
    base = Path(tempfile.mkdtemp(prefix="fd", dir="/tmp"))
    n = ShoalDocker(base, dockerd, hostname="fidelity")
    n.start()
    try:
        n.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        yield n
    finally:
        if n.alive():
            n.docker("swarm", "leave", "--force", check=False)
        n.stop()
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_node_architecture_is_the_engines(node: ShoalDocker, dockerd: str) -> None:
    # dockerd: Description.Platform.Architecture is /info's Architecture (uname: x86_64), not GOARCH
    eng = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        arch = eng.info()["Architecture"]
    finally:
        eng.close()
    out = node.docker("node", "inspect", "self", "--format", "{{json .Description.Platform}}").stdout
    assert json.loads(out) == {"Architecture": arch, "OS": "linux"}


def test_local_network_with_global_scope_is_not_found(node: ShoalDocker) -> None:
    # dockerd: GET /networks/none?scope=global -> 404 {"message":"network none not found"}; ?scope=local -> 200
    c = node.client()
    with pytest.raises(docker.errors.NotFound, match="network none not found"):
        c.api.inspect_network("none", scope="global")
    assert c.api.inspect_network("none", scope="local")["Scope"] == "local"


def test_restart_max_attempts_with_containers(node: ShoalDocker, test_image: str) -> None:
    # dockerd: `--restart-condition on-failure --restart-max-attempts 2` on `exit 3` ends with three tasks,
    # all desired Shutdown, state Failed
    node.docker("service", "create", "--detach", "--name", "rf", "--restart-condition", "on-failure",
                "--restart-max-attempts", "2", "--restart-delay", "1s", test_image, "sh", "-c", "exit 3")

    def states() -> list[tuple[str, str]]:
        tasks = node.client().api.tasks(filters={"service": "rf"})
        return sorted((t["DesiredState"], t["Status"]["State"]) for t in tasks)

    wait_until(lambda: states() == [("shutdown", "failed")] * 3, 90, what="three failed tasks, all shut down")


def test_docker_py_restart_policy_comes_back_as_sent(node: ShoalDocker, test_image: str) -> None:
    # docker-py sends every RestartPolicy field; dockerd returns them as sent, Window 0 included
    c = node.client()
    sent = RestartPolicy(condition="on-failure", max_attempts=2)
    svc = c.services.create(test_image, ["sleep", "1000"], name="rp", restart_policy=sent)
    got = c.api.inspect_service(svc.id)["Spec"]["TaskTemplate"]["RestartPolicy"]
    assert got == dict(sent) == {"Condition": "on-failure", "Delay": 0, "MaxAttempts": 2, "Window": 0}
