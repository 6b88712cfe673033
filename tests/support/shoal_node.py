"""A real `shoal daemon` process for cluster tests: start, kill -9, restart, stop.

`ShoalNode(workdir)` owns `workdir/data` (the node's data dir), `workdir/api.sock` and `workdir/daemon.log`.
The daemon runs with the `process` executor, so no Docker Engine is needed. `.docker(...)` runs the stock
CLI against it, `.client()` gives a docker-py client.

Task processes are supervised by detached shims that outlive the daemon (by design: a restarted agent
adopts them). `.stop()` therefore also kills every shim and command it finds under the data dir, after
checking that the pid still is that process (its /proc start time), so tests never leak processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.wait import wait_until

START_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0


class NodeError(RuntimeError):
    pass


def proc_start_time(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[19])


def pids_with_arg(arg: str) -> list[int]:
    """Pids of processes whose command line contains `arg` as one argument."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in argv:
            out.append(int(entry))
    return out


class ShoalNode:
    def __init__(self, workdir: Path, hostname: str = "node1", extra_args: tuple[str, ...] = (),
                 prefix: tuple[str, ...] = (), netns: str | None = None) -> None:
        self.workdir = workdir
        self.netns = netns  # run the daemon in this network namespace (its API socket stays reachable)
        self.data_dir = workdir / "data"
        self.socket = workdir / "api.sock"
        if len(str(self.socket)) > 100:  # AF_UNIX paths are limited to 108 bytes
            import tempfile

            self.socket = Path(tempfile.mkdtemp(prefix="shoal-")) / "api.sock"
        self.ready_file = workdir / "ready"
        self.log_path = workdir / "daemon.log"
        self.hostname = hostname
        self.extra_args = extra_args
        self.prefix = prefix  # e.g. ("ip", "netns", "exec", NAME): run the daemon inside a lab host
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: list[Any] = []
        workdir.mkdir(parents=True, exist_ok=True)

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.url
        env.pop("DOCKER_CONTEXT", None)
        env.pop("DOCKER_TLS_VERIFY", None)
        env["DOCKER_CONFIG"] = str(self.workdir / "docker-config")  # no user config, no credential helpers
        env["DOCKER_CLI_HINTS"] = "false"
        return env

    def start(self) -> ShoalNode:
        if self.proc is not None and self.proc.poll() is None:
            raise NodeError("already running")
        self.ready_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        try:
            # nsenter switches only the network namespace (ip netns exec would also remount /sys).
            prefix = ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else list(self.prefix)
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "shoal.cli", "daemon", "--data-dir", str(self.data_dir),
                 "--api-socket", str(self.socket), "--executor", "process", "--hostname", self.hostname,
                 "--ready-file", str(self.ready_file), *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        try:
            wait_until(self._ready, START_TIMEOUT, what="the daemon to answer /_ping")
        except AssertionError:
            tail = self.log_tail()
            self.kill9()
            raise NodeError(f"shoal daemon did not start; log:\n{tail}") from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise NodeError(f"shoal daemon exited with {self.proc.returncode}; log:\n{self.log_tail()}")
        if not self.ready_file.exists():
            return False
        return self.ping()

    def ping(self) -> bool:
        import socket

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect(str(self.socket))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: shoal\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data.startswith(b"HTTP/1.") and data.endswith(b"OK")
        except OSError:
            return False
        finally:
            s.close()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _close_clients(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()

    def kill9(self) -> None:
        """SIGKILL the daemon (its detached task shims keep running)."""
        self._close_clients()
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def terminate(self, timeout: float = 15.0) -> None:
        self._close_clients()
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> ShoalNode:
        self.terminate()
        return self.start()

    def stop(self) -> None:
        """Stop the daemon and kill every task process it left behind."""
        self.terminate()
        self.kill_task_processes()

    # --- task processes -----------------------------------------------------------------------------

    @property
    def tasks_dir(self) -> Path:
        return self.data_dir / "executor" / "tasks"

    def task_dirs(self) -> list[Path]:
        if not self.tasks_dir.is_dir():
            return []
        return sorted(p for p in self.tasks_dir.iterdir() if p.is_dir())

    def shim_pids(self, task_id: str | None = None) -> list[int]:
        """Live shim processes of this node (of one task when given), found through /proc."""
        if task_id is not None:
            return pids_with_arg(str(self.tasks_dir / task_id))
        prefix = str(self.tasks_dir) + "/"
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"shoal.agent.exec.shim" in argv and any(a.startswith(prefix.encode()) for a in argv):
                out.append(int(entry))
        return out

    def command_pids(self) -> dict[str, int]:
        """task id -> pid of its running command, from state.json, if that process is alive."""
        out = {}
        for d in self.task_dirs():
            try:
                st = json.loads((d / "state.json").read_text())
            except (OSError, ValueError):
                continue
            pid, start = int(st.get("pid", 0)), st.get("pid_start")
            if pid and proc_start_time(pid) == start and not (d / "exit").exists():
                out[d.name] = pid
        return out

    def kill_task_processes(self) -> None:
        for d in self.task_dirs():
            try:
                st = json.loads((d / "state.json").read_text())
            except (OSError, ValueError):
                continue
            for pid_key, start_key, group in (("pid", "pid_start", True), ("shim_pid", "shim_start", False)):
                pid = int(st.get(pid_key, 0))
                if not pid or proc_start_time(pid) != st.get(start_key):
                    continue
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if group:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
        for pid in self.shim_pids():  # shims not (or no longer) recorded in a state.json
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.shim_pids(), 10, what="the task shims to exit")
        self.unmount_task_dirs()

    def unmount_task_dirs(self) -> None:
        """Unmount what the node mounted (as root) and left: the secrets tmpfs of task dirs it did not remove,
        the network namespaces of its tasks and networks (bound under data/net; the kernel frees each one,
        with its devices, once nothing holds it)."""
        prefix = str(self.data_dir.resolve()) + "/"
        try:
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        except OSError:
            return
        for mnt in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=10, check=False)

    # --- clients -------------------------------------------------------------------------------------

    def docker(self, *args: str, check: bool = True, timeout: float = CLI_TIMEOUT,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the stock `docker` CLI against this node."""
        cp = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                            input=input, cwd=self.workdir)
        if check and cp.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {cp.returncode}\nstdout: {cp.stdout}\n"
                                 f"stderr: {cp.stderr}")
        return cp

    def client(self, timeout: int = 60) -> Any:
        import docker

        c = docker.DockerClient(base_url=self.url, timeout=timeout)
        self._clients.append(c)
        return c

    def api(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """A raw HTTP request on the socket: (status, decoded JSON or text)."""
        import http.client
        import socket

        class _Conn(http.client.HTTPConnection):
            def connect(self_inner) -> None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(30)
                s.connect(str(self.socket))
                self_inner.sock = s

        conn = _Conn("shoal")
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")
