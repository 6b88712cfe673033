"""`shoal demo --executor docker` on a real, private dockerd with no registry: the demo stack converges (on a
busybox image the demo builds offline when the engine has none), and stopping the demo removes its
containers, engine networks and mounts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import pytest

from shoal.demo import OFFLINE_IMAGE
from tests.support.managers import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]


def test_the_demo_stack_runs_on_containers_and_stopping_removes_them(dockerd: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="dm", dir="/tmp"))
    eng = docker.DockerClient(base_url=dockerd, timeout=60)
    demo = subprocess.run([sys.executable, "-m", "shoal.cli", "demo", "--dir", str(workdir), "--executor", "docker",
                           "--engine-host", dockerd, "--listen-addr", f"127.0.0.1:{free_port()}", "--detach"],
                          capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    pid = int((workdir / "daemon.pid").read_text()) if (workdir / "daemon.pid").exists() else 0
    try:
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "Not every service converged" not in demo.stdout, demo.stdout
        assert "3/3" in demo.stdout and "(2/2 completed)" in demo.stdout, demo.stdout
        nid = subprocess.run(["docker", "-H", f"unix://{workdir}/api.sock", "info", "--format",
                              "{{.Swarm.NodeID}}"], capture_output=True, text=True, check=True).stdout.strip()
        label = {"label": f"com.shoal.node.id={nid}"}
        # web x3, worker x1 (the job's have exited); the engine's listing can trail the swarm's view while a
        # container restarts on a loaded host, so the count is waited for, not read once
        running = wait_until(
            lambda: (lambda cs: cs if len(cs) == 4 else None)(eng.containers.list(filters=label, ignore_removed=True)),
            30, what="4 running containers (web x3, worker x1)")
        images = {c.image.tags[0] if c.image.tags else "" for c in running}
        assert images <= {"busybox:latest", OFFLINE_IMAGE}, images
        worker = next(c for c in running if "demo_worker" in c.name)
        wait_until(lambda: b"token is" in worker.logs(), 30, what="the worker reading its secret")

        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, what="the daemon to exit")
        took = time.monotonic() - t0
        assert eng.containers.list(all=True, filters=label) == []
        assert eng.networks.list(filters=label) == []
        mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()
                  if ln.split()[1].startswith(str(workdir))]
        assert mounts == []
        assert took < 10, f"stopping the demo took {took:.1f}s"
    finally:
        if pid and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        eng.close()
        subprocess.run(["umount", "-R", "-l", str(workdir)], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
