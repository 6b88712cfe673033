"""A node only takes what is its own on the host, and gives it back: the manager port is bound exclusively,
and `docker swarm leave --force` removes every process, mount and file the node made (process executor).
Real `shoal daemon` processes, the stock docker CLI."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.host_state import mounts_under, nft_tables, processes_naming
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_second_swarm_init_on_a_taken_manager_port_fails_as_dockerd(tmp_path: Path) -> None:
    """grpc sets SO_REUSEPORT by default: without turning it off two daemons both listened on the same
    address and joins landed on either cluster."""
    port = _free_port()
    a = ShoalNode(tmp_path / "a", hostname="a").start()
    b = ShoalNode(tmp_path / "b", hostname="b").start()
    try:
        a.docker("swarm", "init", "--listen-addr", f"127.0.0.1:{port}", "--advertise-addr", "127.0.0.1")
        cp = b.docker("swarm", "init", "--listen-addr", f"127.0.0.1:{port}", "--advertise-addr", "127.0.0.1",
                      check=False)
        assert cp.returncode == 1, cp
        assert cp.stderr.strip() == (
            "Error response from daemon: manager stopped: failed to listen on remote API address: "
            f"listen tcp 127.0.0.1:{port}: bind: address already in use"), cp.stderr
        status, info = b.api("GET", "/info")
        assert status == 200
        assert info["Swarm"]["LocalNodeState"] == "inactive"
        # Nor can another program that sets SO_REUSEPORT itself share the port.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                s.bind(("127.0.0.1", port))
        # The refused node holds nothing: a plain socket can still not bind the port (a's), and once a leaves,
        # b's init succeeds on it.
        a.docker("swarm", "leave", "--force")
        wait_until(lambda: _bindable(port), 10, what="a to release the manager port")
        b.docker("swarm", "init", "--listen-addr", f"127.0.0.1:{port}", "--advertise-addr", "127.0.0.1")
    finally:
        a.stop()
        b.stop()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_sigusr1_dumps_every_task_of_a_busy_manager(shoal_node: ShoalNode) -> None:
    """The dump raised TypeError (Task.print_stack on a frame with no line number) on a manager with
    services, and showed nothing."""
    shoal_node.docker("service", "create", "-d", "--name", "dumped", "--replicas", "2", "busybox", "sleep", "600")
    wait_until(lambda: len(shoal_node.command_pids()) == 2, 30, what="two task processes")
    assert shoal_node.proc is not None
    size = shoal_node.log_path.stat().st_size
    shoal_node.proc.send_signal(signal.SIGUSR1)

    def dumped() -> str:
        with open(shoal_node.log_path, "rb") as f:
            f.seek(size)
            text = f.read().decode(errors="replace")
        return text if "asyncio tasks:" in text and "--- agent" in text else ""

    text = wait_until(dumped, 10, what="the task dump in the log")
    assert "TypeError" not in text and "Exception in callback" not in text, text
    # Each task down its await chain, not only its outermost frame: the agent's reaches into what it awaits.
    agent = text.split("--- agent", 1)[1].split("\n--- ", 1)[0]
    assert agent.count('File "') >= 2, agent


def test_leave_force_removes_every_process_mount_and_file_of_the_node(shoal_node: ShoalNode) -> None:
    node = shoal_node
    node.docker("network", "create", "-d", "overlay", "lcnet")
    node.docker("secret", "create", "lcsecret", "-", input="s3cret")
    node.docker("service", "create", "-d", "--name", "lcweb", "--replicas", "2", "--network", "lcnet",
                "--secret", "lcsecret", "--publish", "published=0,target=80", "busybox", "sleep", "600")
    node.docker("service", "create", "-d", "--name", "lcjob", "--mode", "replicated-job", "busybox", "true")
    wait_until(lambda: len(node.command_pids()) == 2, 30, what="two task processes")
    assert node.proc is not None
    daemon = node.proc.pid
    assert [p for p in processes_naming(node.data_dir) if p != daemon], "task shims run"
    assert mounts_under(node.data_dir), "secrets on tmpfs and namespaces bound under the data dir"

    node.docker("swarm", "leave", "--force")

    assert [p for p in processes_naming(node.data_dir) if p != daemon] == []
    assert mounts_under(node.data_dir) == []
    # The overlay's bridge, the tasks' veths and the VXLAN device live in namespaces bound under the data dir
    # (gone with the mounts above: the kernel frees their devices); none is ever in the host's namespace,
    # and neither is an nftables table of this node (shoal_mesh is the docker executor's, shared by a host).
    assert "table ip shoal" not in nft_tables()
    left = sorted(str(p.relative_to(node.data_dir)) for p in node.data_dir.rglob("*"))
    assert left == [], left
    status, info = node.api("GET", "/info")
    assert status == 200 and info["Swarm"]["LocalNodeState"] == "inactive"


def test_sigterm_is_prompt_with_streaming_clients_attached(shoal_node: ShoalNode) -> None:
    """`docker events` and `docker service logs -f` kept the API server's graceful shutdown waiting for them
    until the daemon's 15 s watchdog ended it."""
    node = shoal_node
    node.docker("service", "create", "-d", "--name", "chatty", "busybox", "sh", "-c",
                "while true; do echo hi; sleep 1; done")
    wait_until(lambda: len(node.command_pids()) == 1, 30, what="the task process")
    streams = [subprocess.Popen(["docker", *args], env=node.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for args in (("events",), ("service", "logs", "-f", "chatty"))]
    try:
        wait_until(lambda: _connections(node) >= 2, 10, what="both streams connected")
        assert node.proc is not None
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        node.proc.wait(30)
        took = time.monotonic() - t0
        assert took < 5, f"the daemon took {took:.1f}s to stop"
        assert "did not stop within" not in node.log_path.read_text()
    finally:
        for p in streams:
            p.kill()
            p.wait()


def _connections(node: ShoalNode) -> int:
    """Established connections on the node's API socket (ss counts both ends: the server's half)."""
    out = subprocess.run(["ss", "-xH", "state", "connected", "src", str(node.socket)], capture_output=True,
                         text=True, check=False).stdout
    return len(out.splitlines())
