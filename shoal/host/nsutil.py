"""Network namespaces from Python (standard library only: the task shim imports this module).

- `socket_in(path, ...)`: a socket created inside the network namespace at `path` and returned to the caller,
  which serves it from its own event loop. A socket belongs to the namespace it was created in for its whole
  life, so the daemon listens (DNS at 127.0.0.11) and connects (balancer backends) inside task and network
  namespaces without a process per namespace. Only the calling thread switches, and only for the `socket()`
  call itself.
- `enter(path, resolv_conf)`: what a task process runs between fork and exec: a private mount namespace with
  the task's resolv.conf bound over /etc/resolv.conf, then the network namespace.
- `open_netns_of(pid)`, `alive(pidfd)`, `bind_fd(fd, path)`: hold another process's network namespace by a file
  of our own. `/proc/<pid>/ns/net` names whatever process has that pid now, and pids are reused once a process
  is reaped; a pidfd never is. So the namespace is opened together with a pidfd, the caller checks that the pid
  is (still) the process it means, and if the pidfd's process is still alive after that check, the opened
  namespace is that process's and is bound to a file, which then stands for it however long it lives.

`setns(2)`/`unshare(2)` come from libc through ctypes (`os.setns` is Python 3.12+).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    _check(_lib().setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_lib().unshare(flags), "unshare")


def mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    _check(_lib().mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None),
           f"mount {source} on {target}")


def socket_in(path: str | None, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A new socket in the network namespace at `path` (None: this thread's own)."""
    if path is None:
        return socket.socket(family, type, proto)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            setns(target)
            try:
                return socket.socket(family, type, proto)
            finally:
                setns(home)
        finally:
            os.close(target)
    finally:
        os.close(home)


def open_netns_of(pid: int) -> tuple[int, int]:
    """(pidfd, network namespace fd) of process `pid`; both are the caller's to close. OSError when it is gone."""
    pidfd = os.pidfd_open(pid)
    try:
        return pidfd, os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    except BaseException:
        os.close(pidfd)
        raise


def alive(pidfd: int) -> bool:
    """Has the process of `pidfd` not been reaped? (until then its pid cannot name another process)"""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    return True


def bind_fd(fd: int, path: str) -> None:
    """Bind the namespace open at `fd` to the (existing, empty) file `path`."""
    mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)


def enter(netns: str, resolv_conf: str | None = None) -> None:
    """Join the network namespace `netns`; with `resolv_conf`, in a mount namespace of our own where that file
    is bound over /etc/resolv.conf (mounts of the host still propagate in, none of ours leak out)."""
    if resolv_conf:
        unshare(CLONE_NEWNS)
        mount("none", "/", None, MS_REC | MS_SLAVE)
        mount(resolv_conf, os.path.realpath("/etc/resolv.conf"), None, MS_BIND)
    fd = os.open(netns, os.O_RDONLY)
    try:
        setns(fd)
    finally:
        os.close(fd)
