"""`shoal demo`: a one-node local swarm with a small stack, driven by the stock docker CLI.

It starts `shoal daemon` in the background (the process executor unless asked otherwise, so no container
engine is needed), initialises the swarm, deploys examples/demo-stack.yml with `docker stack deploy`, and
shows `docker service ls`. The daemon keeps running until Ctrl-C (or, with --detach, until
`kill $(cat <dir>/daemon.pid)`).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
        time.sleep(0.1)
    raise SystemExit("shoal daemon did not answer in time")


def run_demo(workdir: Path, executor: str = "process", detach: bool = False) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "api.sock"
    log = open(workdir / "daemon.log", "ab")
    pidfile = workdir / "daemon.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            time.sleep(0.5)
        except (OSError, ValueError):
            pass
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli", "daemon", "--data-dir", str(workdir / "data"), "--api-socket", str(sock),
         "--executor", executor, "--hostname", "demo-node"],
        stdout=log, stderr=log, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    _wait_ready(sock, proc)
    status, info = api(sock, "GET", "/info")
    assert isinstance(info, dict)
    if info.get("Swarm", {}).get("LocalNodeState") != "active":
        status, body = api(sock, "POST", "/swarm/init", {"ListenAddr": "127.0.0.1:2377"})
        if status != 200:
            print(f"swarm init failed: {body}", file=sys.stderr)
            return 1
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    docker = shutil.which("docker")
    print(f"Shoal is running (pid {proc.pid}, {executor} executor). Use it with:\n\n"
          f"    export DOCKER_HOST=unix://{sock}\n")
    if docker is None:
        print("The docker CLI is not on the PATH; creating the demo service through the API instead.")
        api(sock, "POST", "/services/create", {
            "Name": "web", "Mode": {"Replicated": {"Replicas": 3}},
            "TaskTemplate": {"ContainerSpec": {
                "Image": "busybox", "Command": ["sh", "-c", "while true; do echo hi; sleep 3; done"]}}})
    else:
        subprocess.run([docker, "stack", "deploy", "-c", str(STACK), "demo"], env=env, cwd=STACK.parent, check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run([docker, "service", "ls", "--format", "{{.Replicas}}"], env=env,
                                 capture_output=True, text=True, check=False).stdout.split()
            if out and all(r.split("/")[0] == r.split("/")[1].split(" ")[0] for r in out if "/" in r):
                break
            time.sleep(0.5)
        print()
        subprocess.run([docker, "service", "ls"], env=env, check=False)
        print()
        subprocess.run([docker, "stack", "ps", "demo"], env=env, check=False)
        print("\nTry: docker service logs demo_web | docker service scale demo_web=5 | docker node ls")
    if detach:
        print(f"\nThe daemon keeps running; stop it with: kill $(cat {pidfile})")
        return 0
    print("\nPress Ctrl-C to stop the demo.")
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return 0
