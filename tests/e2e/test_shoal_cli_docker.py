"""The `shoal` subcommands against `shoal daemon --executor docker` on a private dockerd: the same status, scale,
rollback, drain-free follow and diagnose as with the process executor (tests/cluster/test_shoal_cli.py), with tasks
that are containers."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.e2e.shoal_docker import ShoalDocker, swarm_node

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SECRET = "docker-exec-secret-Hq3Ty8"


def shoal(node: ShoalDocker, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run([sys.executable, "-m", "shoal.cli", *args], env={**node.env(), "COLUMNS": "200"},
                        capture_output=True, text=True, timeout=150)
    if check and cp.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)} exited {cp.returncode}\nstdout: {cp.stdout}\n"
                             f"stderr: {cp.stderr}\n--- shoal log ---\n{node.log_tail(3000)}")
    return cp


def test_status_scale_rollback_diagnose_with_containers(dockerd: str, test_image: str, tmp_path: Path) -> None:
    with swarm_node(dockerd, "scli", "dnode") as node:
        node.docker("secret", "create", "pw", "-", input=SECRET.encode())
        node.docker("service", "create", "--detach", "--name", "cweb", "--secret", "pw", "--update-delay", "0s",
                    test_image, "sleep", "600")
        out = shoal(node, "scale", "cweb=3", "--timeout", "120").stdout
        assert "cweb: converged (3/3)" in out
        st = json.loads(shoal(node, "status", "--json").stdout)
        web = next(s for s in st["services"] if s["name"] == "cweb")
        assert (web["running"], web["desired"], web["state"]) == (3, 3, "converged")
        assert st["raft"]["verdict"] == "healthy" and st["nodes"][0]["tasks"] == 3
        # The three tasks are containers on the engine, seen through the same socket.
        assert len(node.docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=cweb").stdout.split()) == 3

        node.docker("service", "update", "--detach", "--env-add", "MODE=new", "cweb")
        assert "cweb: converged (3/3)" in shoal(node, "wait", "cweb", "--timeout", "120").stdout
        out = shoal(node, "rollback", "cweb", "--timeout", "120").stdout
        assert "cweb: converged (3/3)" in out
        env = node.docker("service", "inspect", "cweb", "--format",
                          "{{json .Spec.TaskTemplate.ContainerSpec.Env}}").stdout.strip()
        assert env in ("null", "[]")

        assert "Unplaceable: none" in shoal(node, "top", "--once").stdout

        shoal(node, "diagnose", "-o", str(tmp_path / "b.tar.gz"))
        with tarfile.open(tmp_path / "b.tar.gz") as tar:
            blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
        assert SECRET.encode() not in blob and b"SWMTKN-1-" not in blob and b"cweb" in blob
