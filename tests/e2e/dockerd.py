"""A private Docker Engine for end-to-end tests, and the offline test image.

`start_dockerd(base)` runs `/usr/sbin/dockerd` with its own data-root, exec-root, pidfile and unix
socket, so it never touches (or depends on) a dockerd already running on the machine. It runs with
`--bridge=none --iptables=false`: no docker0 bridge and no iptables rules that could collide with
another daemon; containers get the `none` network (loopback only), which is all the executor tests
need. Pass `extra_args` for anything else.

`shared_dockerd()` is what the pytest fixture uses: one dockerd per test run, shared by all
pytest-xdist workers of that run through a file lock and a reference count.

`ensure_test_image(docker_host)` builds `shoal-test/busybox:latest` without any registry: a rootfs of
Debian's static busybox (`busybox-static`, /bin/busybox) is imported, `busybox --install -s /bin` is
run once in it, and the result is committed with `Cmd ["sh"]`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import select
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
TEST_IMAGE = "shoal-test/busybox:latest"


class DockerdUnavailable(Exception):
    """dockerd is not installed, or cannot run here (not root, no kernel support...)."""


@dataclass(frozen=True, slots=True)
class Dockerd:
    base: Path  # holds the socket, exec-root and pidfile
    data_root: Path
    pid: int

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.base / "dockerd.log"


def why_unavailable() -> str | None:
    """A reason the tests cannot start a dockerd here, or None."""
    if shutil.which(DOCKERD) is None and not os.path.exists(DOCKERD):
        return f"{DOCKERD} is not installed (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "starting a private dockerd needs root"
    return None


def ping(sock: Path, timeout: float = 2.0) -> bool:
    """GET /_ping over the unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] + b" "
    except OSError:
        return False


def _wait_pid_exit(pid: int, timeout: float) -> bool:
    """Block until process `pid` (not necessarily our child) has exited; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))
    finally:
        os.close(fd)


def start_dockerd(
    base: Path, *, data_root: Path | None = None, timeout: float = 60.0, extra_args: tuple[str, ...] = (),
    prefix: tuple[str, ...] = (),
) -> Dockerd:
    """`prefix` goes before the dockerd command, e.g. `nsenter --net=/run/netns/X` to run it in a network
    namespace (nsenter execs dockerd, so the pid is still dockerd's)."""
    reason = why_unavailable()
    if reason:
        raise DockerdUnavailable(reason)
    base.mkdir(parents=True, exist_ok=True)
    data_root = data_root or base / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    sock = base / "docker.sock"
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    args = [
        *prefix,
        DOCKERD,
        f"--data-root={data_root}",
        f"--exec-root={base / 'exec'}",
        f"--pidfile={base / 'dockerd.pid'}",
        f"--host=unix://{sock}",
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--shutdown-timeout=2",
        "--log-level=warn",
        *extra_args,
    ]
    with open(base / "dockerd.log", "ab") as logf:
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    # Poll the readiness endpoint until it answers (or the daemon dies): a condition, not a fixed sleep.
    while not ping(sock):
        if proc.poll() is not None:
            tail = (base / "dockerd.log").read_text(errors="replace")[-2000:]
            raise DockerdUnavailable(f"dockerd exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            stop_pid(proc.pid)
            raise DockerdUnavailable(f"dockerd did not answer /_ping within {timeout}s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)
    return Dockerd(base=base, data_root=data_root, pid=proc.pid)


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_pid_exit(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_pid_exit(pid, 10)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_dockerd(d: Dockerd, *, cleanup: bool = True) -> None:
    stop_pid(d.pid)
    if cleanup:
        shutil.rmtree(d.data_root, ignore_errors=True)
        shutil.rmtree(d.base, ignore_errors=True)


# --- one dockerd per test run, shared by xdist workers -----------------------------------------


def _run_id() -> str:
    # All xdist workers of one run share PYTEST_XDIST_TESTRUNUID; without xdist, one process.
    return os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:12] or f"p{os.getpid()}"


def _run_dirs() -> tuple[Path, Path]:
    rid = _run_id()
    base = Path("/run") / f"shoal-test-{rid}"  # short: unix socket paths are limited to 107 bytes
    data = Path(tempfile.gettempdir()) / f"shoal-test-{rid}-data"
    return base, data


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or "0")
    except (FileNotFoundError, ValueError):
        return 0


@contextlib.contextmanager
def shared_dockerd() -> Iterator[str]:
    """Yield the socket URL of this test run's private dockerd, starting it on first use and stopping
    it when the last user (xdist worker) is done."""
    reason = why_unavailable()
    if reason:
        raise DockerdUnavailable(reason)
    base, data = _run_dirs()
    lock = base.with_name(base.name + ".lock")
    users = base / "users"
    pidfile = base / "dockerd.pid"
    with _locked(lock):
        if _read_int(users) > 0 and ping(base / "docker.sock"):
            d = Dockerd(base=base, data_root=data, pid=_read_int(pidfile))
        else:
            d = start_dockerd(base, data_root=data)
            users.write_text("0")
        users.write_text(str(_read_int(users) + 1))
    try:
        yield d.url
    finally:
        with _locked(lock):
            left = _read_int(users) - 1
            users.write_text(str(left))
            if left <= 0:
                stop_dockerd(d)
        if left <= 0:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


# --- the offline test image ----------------------------------------------------------------------


def _is_static_elf(path: str) -> bool:
    """True when `path` is an ELF executable without a program interpreter (statically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only; good enough for CI hosts
            return head[:4] == b"\x7fELF"
        little = head[5] == 1
        order: Literal["little", "big"] = "little" if little else "big"
        phoff = int.from_bytes(head[32:40], order)
        phentsize = int.from_bytes(head[54:56], order)
        phnum = int.from_bytes(head[56:58], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type = int.from_bytes(table[i * phentsize : i * phentsize + 4], order)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def _rootfs_tar(busybox: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "run"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ensure_test_image(docker_host: str, *, busybox: str = BUSYBOX) -> str:
    """Build `shoal-test/busybox:latest` on the engine at `docker_host` unless present; return its name."""
    import docker  # type: ignore[import-untyped]  # docker-py: a test-only client

    client = docker.DockerClient(base_url=docker_host, timeout=120)
    try:
        if docker_host.startswith("unix://"):
            lock = Path(docker_host.removeprefix("unix://")).parent / "image.lock"
        else:
            digest = hashlib.sha256(docker_host.encode()).hexdigest()[:12]
            lock = Path(tempfile.gettempdir()) / f"shoal-test-image-{digest}.lock"
        with _locked(lock):
            try:
                client.images.get(TEST_IMAGE)
                return TEST_IMAGE
            except docker.errors.ImageNotFound:
                pass
            if not os.path.exists(busybox):
                raise DockerdUnavailable(f"{busybox} is missing (apt-get install busybox-static)")
            if not _is_static_elf(busybox):
                raise DockerdUnavailable(f"{busybox} is not statically linked (install busybox-static)")
            api = client.api
            api.import_image_from_data(
                _rootfs_tar(busybox), repository="shoal-test/busybox-base", tag="latest"
            )
            c = api.create_container(
                "shoal-test/busybox-base:latest", ["/bin/busybox", "--install", "-s", "/bin"]
            )
            try:
                api.start(c)
                res = api.wait(c)
                if res.get("StatusCode") != 0:
                    raise DockerdUnavailable(f"busybox --install failed: {res}")
                api.commit(c, repository="shoal-test/busybox", tag="latest", conf={"Cmd": ["sh"]})
            finally:
                api.remove_container(c, force=True)
        return TEST_IMAGE
    finally:
        client.close()
