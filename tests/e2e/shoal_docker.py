"""A `shoal daemon --executor docker` subprocess for end-to-end tests, driven by the stock docker CLI.

`ShoalDocker(base, engine_url)` runs `python -m shoal.cli daemon --executor docker --engine-host URL`
with its own data dir and API socket under `base` (keep `base` short: unix socket paths are limited to
107 bytes). `start()` waits for the ready file and for `/_ping` on the socket; `kill()` is `kill -9`;
`restart()` kills and starts it again on the same data dir.

`swarm_node(dockerd, prefix, hostname)` is such a node in a fresh directory with a swarm inited on a free port,
torn down after with what it made on the engine.

`.docker(*args)` runs the stock `docker` CLI with `DOCKER_HOST=unix://<shoal socket>` and a private
`DOCKER_CONFIG`; `.client()` is a docker-py client on the same socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.dockerd import ping
from tests.support.managers import free_port


class DaemonDied(Exception):
    pass


class ShoalDocker:
    def __init__(self, base: Path, engine_url: str, *, hostname: str = "node1",
                 extra_args: tuple[str, ...] = (), prefix: tuple[str, ...] = ()) -> None:
        self.extra_args = extra_args
        self.prefix = prefix  # before the command, e.g. `nsenter --net=PATH` to run in a network namespace
        self.base = Path(base)
        self.engine_url = engine_url
        self.hostname = hostname
        self.data_dir = self.base / "data"
        self.socket = self.base / "api.sock"
        self.ready_file = self.base / "ready"
        self.log_path = self.base / "shoal.log"
        self.config_dir = self.base / "cli"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    # --- process ----------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        args = [
            *self.prefix, sys.executable, "-m", "shoal.cli", "daemon",
            "--data-dir", str(self.data_dir),
            "--api-socket", str(self.socket),
            "--executor", "docker",
            "--engine-host", self.engine_url,
            "--hostname", self.hostname,
            "--ready-file", str(self.ready_file),
            "--log-level", "info",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as logf:
            logf.write(f"--- start {' '.join(args)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (self.ready_file.exists() and ping(self.socket)):
            if self.proc.poll() is not None:
                raise DaemonDied(f"shoal daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DaemonDied(f"shoal daemon not ready within {timeout}s:\n{self.log_tail()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.05)

    def kill(self) -> None:
        """kill -9: no cleanup at all, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # --- clients ------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.config_dir), DOCKER_CLI_HINTS="false")
        return env

    def docker(self, *args: str, check: bool = True, timeout: float = 90.0,
               input: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the stock CLI against this node. With check, a non-zero exit fails the test with the
        output and the daemon's log tail."""
        res = subprocess.run(["docker", *args], env=self.env(), capture_output=True, timeout=timeout,
                             input=input, cwd=cwd)
        out = subprocess.CompletedProcess(res.args, res.returncode, res.stdout.decode(errors="replace"),
                                          res.stderr.decode(errors="replace"))
        if check and out.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}\n"
                f"--- shoal log tail ---\n{self.log_tail()}")
        return out

    def client(self) -> Any:
        import docker  # type: ignore[import-untyped]

        return docker.DockerClient(base_url=self.host, timeout=60)


@contextlib.contextmanager
def swarm_node(dockerd: str, prefix: str, hostname: str, *, init: bool = True, init_args: tuple[str, ...] = (),
               extra_args: tuple[str, ...] = (), base_mode: int = 0o700) -> Iterator[ShoalDocker]:
    """A started ShoalDocker on `dockerd` in a new directory /tmp/<prefix>XXXX (mode `base_mode`), which has
    inited a swarm listening on a free loopback port (with `init_args`) unless `init` is false. After: the swarm
    left, the daemon stopped, the engine's containers and networks labelled with the node's ID removed, mounts
    under the directory detached and the directory removed."""
    import docker

    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(base_mode)
    n = ShoalDocker(base, dockerd, hostname=hostname, extra_args=extra_args)
    nid = ""
    try:
        n.start()
        if init:
            n.docker("swarm", "init", "--advertise-addr", "127.0.0.1", *init_args,
                     "--listen-addr", f"127.0.0.1:{free_port()}")
            nid = n.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        yield n
    finally:
        if n.alive():
            # The test may have inited (or left and inited again) itself.
            nid = n.docker("info", "--format", "{{.Swarm.NodeID}}", check=False).stdout.strip() or nid
            n.docker("swarm", "leave", "--force", check=False)
        n.stop()
        if nid:
            engine = docker.DockerClient(base_url=dockerd, timeout=60)
            try:
                for c in engine.api.containers(all=True, filters={"label": f"com.shoal.node.id={nid}"}):
                    engine.api.remove_container(c["Id"], force=True)
                for net in engine.api.networks(filters={"label": f"com.shoal.node.id={nid}"}):
                    engine.api.remove_network(net["Id"])
            finally:
                engine.close()
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
