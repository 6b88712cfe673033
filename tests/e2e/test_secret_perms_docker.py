"""Secrets and configs of a docker-executor task on a real dockerd: inside the container each file has its
reference's uid, gid and mode (the task's user reads what it may, another user in the container does not), and
on the host the files Shoal keeps for the bind mounts sit in directories no local user but root can enter.
The process executor's side is tests/unit/test_secret_perms.py."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.e2e.shoal_docker import ShoalDocker, swarm_node
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180),
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                 reason="needs root and setpriv (to read as another uid)")]

NOBODY = 65534


@pytest.fixture
def node(dockerd: str, test_image: str) -> Iterator[ShoalDocker]:
    # The base reachable by every user: only Shoal's own directories may stop them.
    with swarm_node(dockerd, "sp", "permnode", base_mode=0o755) as n:
        yield n


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=30)


def test_docker_task_files_are_as_requested_and_closed_on_the_host(node: ShoalDocker, test_image: str,
                                                                     dockerd: str) -> None:
    n = node
    n.docker("secret", "create", "db", "-", input=b"hunter2")
    n.docker("config", "create", "app", "-", input=b"port=80\n")
    n.docker("service", "create", "--detach", "--name", "perm", "--no-resolve-image", "--user", "1234:1234",
             "--secret", "source=db,target=db,uid=1234,gid=4321,mode=0400",
             "--secret", "source=db,target=other,uid=0,gid=0,mode=0400",
             "--config", "source=app,target=/etc/app.conf,uid=0,gid=1234,mode=0440",
             test_image, "sleep", "3600")
    engine = docker.DockerClient(base_url=dockerd, timeout=60)
    try:
        def container() -> Any:
            cs = engine.containers.list(filters={"label": "com.docker.swarm.service.name=perm"},
                                        ignore_removed=True)
            return cs[0] if cs else None

        c = wait_until(container, 90, what="the task's container running")
        out = c.exec_run(["stat", "-c", "%u %g %a %n", "/run/secrets/db", "/run/secrets/other", "/etc/app.conf"])
        assert out.output.decode().splitlines() == ["1234 4321 400 /run/secrets/db", "0 0 400 /run/secrets/other",
                                                    "0 1234 440 /etc/app.conf"]
        assert c.exec_run(["cat", "/run/secrets/db"]).output == b"hunter2"  # as the task's user (1234)
        assert c.exec_run(["cat", "/etc/app.conf"]).output == b"port=80\n"
        assert c.exec_run(["cat", "/run/secrets/other"]).exit_code != 0, "mode 0400 of root is not honoured"
        assert c.exec_run(["cat", "/run/secrets/db"], user="999").exit_code != 0
        sources = [m["Source"] for m in c.attrs["Mounts"] if m["Destination"] in ("/run/secrets/db", "/etc/app.conf")]
    finally:
        engine.close()
    assert len(sources) == 2
    for src in sources:
        parent = os.stat(os.path.dirname(src))
        assert parent.st_uid == 0 and stat.S_IMODE(parent.st_mode) & 0o077 == 0, src
        denied = as_nobody("cat", src)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, f"nobody read {src}"
        assert as_nobody("ls", os.path.dirname(src)).returncode != 0
