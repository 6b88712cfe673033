"""The process executor's per-task supervisor: `python -m shoal.agent.exec.shim <task_dir>`.

Standard library only (it starts once per task; keep it fast). It reads `<task_dir>/spec.json` (written by
`ProcessController.prepare`), detaches (double fork + `setsid`, so it outlives the agent and is never the
agent's child), and then:

- starts the command in its own session and process group (pgid = the command's pid), as the spec's user,
  in the spec's network namespace when it has one (`netns`, with `resolv_conf` bound over /etc/resolv.conf),
  in its cwd and environment, after joining the spec's cgroups and applying its rlimits;
- writes `state.json` atomically: its own pid and /proc start time and the command's, and the start time;
- captures stdout and stderr, one record per line with a timestamp, into `log.jsonl` (see below);
- forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to the command's process group;
- when the command exits, SIGKILLs what is left of its process group (like a container whose init exits),
  drains the pipes and writes the exit code atomically to `exit` (a decimal number; 128+N when killed by
  signal N, as dockerd reports it).

The first process (the one the controller started) waits until the detached supervisor has started the
command, prints the reason on stderr and exits 1 if that failed, else exits 0.

Log records (`log.jsonl`): one JSON object per line, `{"t": <epoch seconds>, "s": "stdout"|"stderr",
"d": <text>}`, where the text is the raw bytes decoded as UTF-8 with `surrogateescape` (so any bytes
round-trip). A line longer than 16 KiB is split into several records, as dockerd does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH)
MAX_RECORD = 16 * 1024
DRAIN_TIMEOUT = 2.0  # seconds to drain the pipes after the command exited (an escaped process may hold them)


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


class _Stream:
    def __init__(self, name: str, fd: int, log_fd: int) -> None:
        self.name = name
        self.fd = fd
        self.log_fd = log_fd
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0 or nl >= MAX_RECORD:
                break
            self._emit(self.buf[:nl + 1])
            self.buf = self.buf[nl + 1:]
        while len(self.buf) >= MAX_RECORD:
            self._emit(self.buf[:MAX_RECORD])
            self.buf = self.buf[MAX_RECORD:]

    def flush(self) -> None:
        if self.buf:
            self._emit(self.buf)
            self.buf = b""

    def _emit(self, chunk: bytes) -> None:
        rec = {"t": time.time(), "s": self.name, "d": chunk.decode("utf-8", "surrogateescape")}
        os.write(self.log_fd, (json.dumps(rec) + "\n").encode("utf-8", "surrogateescape"))


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _spawn(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    cgroup_procs: list[str] = spec.get("cgroup_procs") or []
    rlimit_as: int | None = spec.get("rlimit_as")
    netns: str | None = spec.get("netns")
    resolv_conf: str | None = spec.get("resolv_conf")
    from shoal.host.nsutil import enter  # imported before the fork (stdlib only)

    def setup() -> None:  # runs in the child between fork and exec
        pid = str(os.getpid()).encode()
        for p in cgroup_procs:
            fd = os.open(p, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        if rlimit_as:
            resource.setrlimit(resource.RLIMIT_AS, (rlimit_as, rlimit_as))
        if netns:  # the task's own network namespace, its resolv.conf over /etc/resolv.conf
            enter(netns, resolv_conf)

    uid = spec.get("uid")
    gid = spec.get("gid")
    groups = spec.get("groups")
    return subprocess.Popen(
        spec["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=spec["cwd"], env=spec["env"], start_new_session=True, close_fds=True,
        user=uid, group=gid, extra_groups=groups,
        preexec_fn=setup if (cgroup_procs or rlimit_as or netns) else None)


def _describe_spawn_error(exc: BaseException, argv0: str) -> str:
    if isinstance(exc, FileNotFoundError):
        return f'starting container failed: exec: "{argv0}": executable file not found in $PATH'
    if isinstance(exc, PermissionError):
        return f'starting container failed: exec: "{argv0}": permission denied'
    return f"starting container failed: {exc}"


def supervise(task_dir: str, ready_fd: int) -> int:
    with open(os.path.join(task_dir, "spec.json"), "rb") as f:
        spec: dict[str, Any] = json.load(f)

    # Signals wake the loop through a pipe; their numbers are read from it.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (*FORWARDED, signal.SIGCHLD):
        signal.signal(sig, lambda _s, _f: None)

    log_fd = os.open(os.path.join(task_dir, "log.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        proc = _spawn(spec)
    except BaseException as exc:
        os.write(ready_fd, _describe_spawn_error(exc, str(spec["argv"][0])).encode())
        os.close(ready_fd)
        return 127
    assert proc.stdout is not None and proc.stderr is not None
    pid = proc.pid
    state = {"shim_pid": os.getpid(), "shim_start": proc_start_time(os.getpid()),
             "pid": pid, "pid_start": proc_start_time(pid), "started_at": time.time()}
    write_atomic(os.path.join(task_dir, "state.json"), json.dumps(state).encode())
    os.write(ready_fd, b"ok")
    os.close(ready_fd)

    sel = selectors.DefaultSelector()
    streams = {}
    for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        streams[fd] = _Stream(name, fd, log_fd)
        sel.register(fd, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)

    exited = False
    deadline: float | None = None
    while not exited or streams:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if deadline is not None and timeout == 0.0:
            break
        for key, _ in sel.select(timeout):
            fd = int(key.fd)
            if fd == wake_r:
                try:
                    sigs = os.read(wake_r, 512)
                except BlockingIOError:
                    sigs = b""
                for s in sigs:
                    if s != signal.SIGCHLD and not exited:
                        _killpg(pid, s)
                continue
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                data = b""
            if data:
                streams[fd].feed(data)
            else:
                streams[fd].flush()
                sel.unregister(fd)
                del streams[fd]
        if not exited:
            # The command has exited when it is waitable; kill the rest of its group before reaping it,
            # so the group ID cannot have been reused.
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                exited = True
                _killpg(pid, signal.SIGKILL)
                deadline = time.monotonic() + DRAIN_TIMEOUT
    for st in streams.values():
        st.flush()
    rc = proc.wait()
    code = 128 - rc if rc < 0 else rc
    write_atomic(os.path.join(task_dir, "exit"), f"{code}\n".encode())
    os.close(log_fd)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m shoal.agent.exec.shim <task_dir>", file=sys.stderr)
        return 2
    task_dir = os.path.abspath(argv[0])
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        chunks = []
        while chunk := os.read(ready_r, 4096):
            chunks.append(chunk)
        msg = b"".join(chunks)
        if msg == b"ok":
            return 0
        sys.stderr.write(msg.decode(errors="replace") or "process supervisor failed to start")
        return 1
    # The detached supervisor: no controlling terminal, nothing inherited from the agent's stdio.
    os.close(ready_r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    try:
        rc = supervise(task_dir, ready_w)
    except BaseException:
        rc = 1
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
