"""Every process a benchmark run starts is stopped when the run ends, however it ends.

`install()` marks this process's environment with a run token (children inherit it, also across `setsid`
and double forks, so a daemon re-parented to init is still found) and turns SIGTERM and SIGHUP into
SystemExit and SIGINT into KeyboardInterrupt, so each benchmark's `finally` blocks stop what they started;
a second signal during that clean-up is ignored rather than cutting it short. `reap()` then stops whatever
is left: descendants of this process and processes carrying the token, SIGTERM first, SIGKILL after a grace
period.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterable

ENV = "SHOAL_BENCH_RUN"


def _exit_on(signum: int, _frame: object) -> None:
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    sys.exit(128 + signum)


def install() -> str:
    """Mark this run and route SIGTERM/SIGHUP into SystemExit; returns the run token."""
    token = secrets.token_hex(8)  # fresh even when nested: a run only stops what it started itself
    os.environ[ENV] = token
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, _exit_on)
    return token


def _ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = open(f"/proc/{name}/stat", "rb").read()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: the fields after the last ')' are fixed
        fields = stat[stat.rfind(b")") + 2:].split()
        out[int(name)] = int(fields[1])
    return out


def _marked(pid: int, token: str) -> bool:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        return False
    return f"{ENV}={token}".encode() in env.split(b"\0")


def leftovers(token: str, root: int | None = None) -> set[int]:
    """Processes still running that this run started: descendants of `root` (this process by default) and
    processes whose environment carries `token`; `root` itself is not included."""
    root = os.getpid() if root is None else root
    ppids = _ppids()
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in found:
                found.add(c)
                todo.append(c)
    found |= {pid for pid in ppids if pid != root and _marked(pid, token)}
    found.discard(root)
    found.discard(os.getpid())
    return found


def _alive(pids: Iterable[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = open(f"/proc/{pid}/stat", "rb").read()
        except OSError:
            continue
        if state[state.rfind(b")") + 2:state.rfind(b")") + 3] != b"Z":  # a zombie has already exited
            alive.add(pid)
    return alive


def reap(token: str, grace: float = 5.0) -> list[int]:
    """Stop every leftover process of this run (SIGTERM, then SIGKILL after `grace` seconds); returns the PIDs
    that were still running."""
    pids = leftovers(token)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling /proc for the processes' exit, bounded by the grace period
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
    for pid in _alive(pids) | _alive(leftovers(token)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    return sorted(pids)
