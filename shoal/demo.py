"""`shoal demo`: a one-node local swarm with a small stack, driven by the stock docker CLI.

It starts `shoal daemon --leave-on-exit` in the background (the process executor unless asked otherwise, so
no container engine is needed), initialises the swarm, deploys examples/demo-stack.yml with `docker stack
deploy`, and shows `docker service ls` once every service is converged (a job once its tasks completed).

The demo leaves the host as it found it: Ctrl-C, SIGTERM or a closed terminal (SIGHUP) stop the daemon, which
leaves the swarm on its way out, removing the tasks (processes or containers), their mounts and networks.
The daemon is also told to stop if the demo process dies without a word (the kernel's parent-death signal).
With --detach the daemon stays until `kill $(cat <dir>/daemon.pid)`, which cleans up the same way.

With the docker executor the stack's image is `busybox:latest` when the engine has it or can pull it;
offline, a busybox image is built from the host's static busybox (Debian's busybox-static) as
`shoal-demo/busybox:latest` and used instead (it stays on the engine for the next run).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

STACK = Path(__file__).resolve().parent.parent / "examples" / "demo-stack.yml"


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self._path)
        self.sock = s


def api(sock: Path, method: str, path: str, body: object | None = None) -> tuple[int, object]:
    conn = _UnixHTTP(str(sock))
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return resp.status, raw.decode(errors="replace")


DEMO_IMAGE = "busybox:latest"
OFFLINE_IMAGE = "shoal-demo/busybox:latest"
BUSYBOX = "/bin/busybox"
STOP_TIMEOUT = 30.0  # the daemon's own shutdown watchdog fires at 15 s; leaving the swarm comes first


def _wait_ready(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"shoal daemon exited with {proc.returncode}; see its log")
        try:
            if api(sock, "GET", "/_ping")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)  # polling interval of a bounded wait
    raise SystemExit("shoal daemon did not answer in time")


def _is_demo_daemon(pid: int, workdir: Path) -> bool:
    """Whether `pid` still is a shoal daemon of this demo dir (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"shoal.cli" in argv and str(workdir / "data").encode() in argv


def _stop_pid(pid: int, workdir: Path, timeout: float = STOP_TIMEOUT) -> None:
    if not _is_demo_daemon(pid, workdir):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_demo_daemon(pid, workdir) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval of a bounded wait for another process to exit


def _parent_death_sigterm() -> None:
    """In the daemon (before exec): SIGTERM when the demo process dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def converged(replicas: list[str]) -> bool:
    """Whether every line of `docker service ls --format {{.Replicas}}` is done: "3/3" for a service,
    "0/2 (2/2 completed)" for a job."""
    if not replicas:
        return False
    for r in replicas:
        m = re.search(r"\((\d+)/(\d+) completed\)", r)
        done, want = (m.group(1), m.group(2)) if m else [*r.split("/"), ""][:2]
        if not want or done != want.split()[0]:
            return False
    return True


def _engine_call(engine_sock: str, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, bytes]:
    conn = _UnixHTTP(engine_sock)
    conn.timeout = timeout
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def _busybox_rootfs(busybox: str) -> bytes:
    """A tar of `busybox` as /bin/busybox with a link for each of its applets (`busybox --list-full`)."""
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for d in ("tmp", "etc", "run", "usr/bin", "sbin", "usr/sbin", "root"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for path in applets:
            if path == "bin/busybox":
                continue
            link = tarfile.TarInfo(path)
            link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
            tar.addfile(link)
    return buf.getvalue()


def demo_image(engine_host: str, busybox: str = BUSYBOX) -> str:
    """The image the stack runs on a docker-executor demo: busybox:latest if the engine has it or can pull
    it, else a busybox image built offline from the host's static busybox."""
    if not engine_host.startswith("unix://"):
        return DEMO_IMAGE
    sock = engine_host[len("unix://"):]
    for image in (DEMO_IMAGE, OFFLINE_IMAGE):
        if _engine_call(sock, "GET", f"/images/{image}/json")[0] == 200:
            return image
    status, _ = _engine_call(sock, "POST", "/images/create?fromImage=busybox&tag=latest")
    if status == 200 and _engine_call(sock, "GET", f"/images/{DEMO_IMAGE}/json")[0] == 200:
        return DEMO_IMAGE
    if not os.path.exists(busybox):
        raise SystemExit(f"the engine has no {DEMO_IMAGE} and cannot pull it; installing a static busybox "
                         f"(apt-get install busybox-static) lets the demo build one offline")
    print(f"The engine has no {DEMO_IMAGE} and cannot pull it: building {OFFLINE_IMAGE} from {busybox}.")
    repo, tag = OFFLINE_IMAGE.split(":")
    changes = urllib.parse.quote('CMD ["sh"]')
    status, out = _engine_call(sock, "POST", f"/images/create?fromSrc=-&repo={repo}&tag={tag}&changes={changes}",
                               body=_busybox_rootfs(busybox), headers={"Content-Type": "application/x-tar"})
    if status != 200 or b'"error"' in out:
        raise SystemExit(f"building {OFFLINE_IMAGE} failed: {out.decode(errors='replace')[-300:]}")
    return OFFLINE_IMAGE


def _wait_converged(docker: str, env: dict[str, str], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([docker, "service", "ls", "--format", "{{.Replicas}}"], env=env,
                             capture_output=True, text=True, check=False).stdout.splitlines()
        if converged([line for line in out if line.strip()]):
            return True
        time.sleep(0.3)  # polling interval of a bounded wait
    return False


class _Stop(Exception):
    """SIGTERM or SIGHUP (a closed terminal) reached the demo: stop what it started."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_demo(workdir: Path, executor: str = "process", detach: bool = False,
             engine_host: str | None = None, listen_addr: str = "127.0.0.1:2377") -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "api.sock"
    pidfile = workdir / "daemon.pid"
    if pidfile.exists():  # an earlier demo left detached: it leaves its swarm as it stops
        with contextlib.suppress(OSError, ValueError):
            _stop_pid(int(pidfile.read_text()), workdir)
    engine_host = engine_host or ("unix:///var/run/docker.sock" if executor == "docker" else None)
    image = demo_image(engine_host) if executor == "docker" and engine_host else DEMO_IMAGE
    args = [sys.executable, "-m", "shoal.cli", "daemon", "--data-dir", str(workdir / "data"), "--api-socket",
            str(sock), "--executor", executor, "--hostname", "demo-node", "--leave-on-exit"]
    if engine_host:
        args += ["--engine-host", engine_host]
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    with open(workdir / "daemon.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=None if detach else _parent_death_sigterm)
    pidfile.write_text(str(proc.pid))
    keep = False  # only a detached demo that got its stack deployed leaves the daemon running
    try:
        rc = _drive(workdir, sock, proc, executor, image, detach, listen_addr)
        keep = detach and rc == 0
        return rc
    except (KeyboardInterrupt, _Stop):
        return 130
    finally:
        if not keep:
            print("\nStopping the demo: its swarm, tasks and networks are removed.", flush=True)
            _stop_pid(proc.pid, workdir)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
            pidfile.unlink(missing_ok=True)


def _drive(workdir: Path, sock: Path, proc: subprocess.Popen[bytes], executor: str, image: str,
           detach: bool, listen_addr: str) -> int:
    _wait_ready(sock, proc)
    status, info = api(sock, "GET", "/info")
    assert isinstance(info, dict)
    if info.get("Swarm", {}).get("LocalNodeState") != "active":
        status, body = api(sock, "POST", "/swarm/init", {"ListenAddr": listen_addr})
        if status != 200:
            print(f"swarm init failed: {body}", file=sys.stderr)
            return 1
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}", DEMO_IMAGE=image)
    docker = shutil.which("docker")
    print(f"Shoal is running (pid {proc.pid}, {executor} executor). Use it with:\n\n"
          f"    export DOCKER_HOST=unix://{sock}\n")
    deployed = False
    if docker is None:
        print("The docker CLI is not on the PATH; creating the demo service through the API instead.")
    else:
        deploy = subprocess.run([docker, "stack", "deploy", "-c", str(STACK), "demo"], env=env, cwd=STACK.parent,
                                check=False, capture_output=True, text=True)
        print(deploy.stdout, end="")
        deployed = deploy.returncode == 0
        if not deployed:  # e.g. a docker CLI older than 23 knows no replicated-job in a stack file
            print(f"docker stack deploy failed ({deploy.stderr.strip()}); creating the demo service through the "
                  "API instead.")
    if not deployed:
        api(sock, "POST", "/services/create", {
            "Name": "demo_web", "Mode": {"Replicated": {"Replicas": 3}},
            "TaskTemplate": {"ContainerSpec": {
                "Image": image, "Command": ["sh", "-c", "while true; do echo hi; sleep 3; done"]}}})
    if docker is not None:
        if not _wait_converged(docker, env):
            print("\nNot every service converged within 60 s; `docker service ps demo_web` tells why.")
        print()
        subprocess.run([docker, "service", "ls"], env=env, check=False)
        print()
        if deployed:
            subprocess.run([docker, "stack", "ps", "demo"], env=env, check=False)
        print("\nTry: docker service logs demo_web | docker service scale demo_web=5 | docker node ls")
    if detach:
        print(f"\nThe daemon keeps running; stop it (it leaves its swarm) with: kill $(cat {workdir / 'daemon.pid'})")
        return 0
    print("\nPress Ctrl-C to stop the demo.")
    proc.wait()
    return 0
