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
from collections.abc import Iterable, Iterator
from pathlib import Path

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


@contextlib.contextmanager
def guarded(grace: float = 5.0) -> Iterator[str]:
    """`install()` around a benchmark run on its own (`python bench/NAME.py`), `reap()` when it ends, however."""
    token = install()
    try:
        yield token
    finally:
        left = reap(token, grace)
        if left:
            print(f"stopped {len(left)} process(es) the benchmark left running: {left[:20]}", flush=True)


def _stat(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first, then the parent's PID), or None once the
    process is gone. The command name may hold spaces and parentheses: the fields after the last ')' are fixed."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def _ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        fields = _stat(name) if name.isdigit() else None
        if fields is not None:
            out[int(name)] = int(fields[1])
    return out


def _marked(pid: int, token: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
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
    """Those of `pids` still running (a zombie has already exited)."""
    return {pid for pid in pids if (f := _stat(pid)) is not None and f[0] != b"Z"}


def _collect_children() -> None:
    """Reap this process's exited children, so they stop showing as zombies."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


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
        _collect_children()
    for pid in _alive(pids) | _alive(leftovers(token)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _collect_children()
    return sorted(pids)
