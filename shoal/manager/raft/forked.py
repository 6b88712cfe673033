"""Encode a snapshot in a forked child, so that the encoding does not hold this process's GIL.

Encoding a manager's whole store (100,000 tasks) takes seconds of Python. In a thread it holds the GIL in turns
with the event loop, and each time the loop gives the GIL up for a system call it waits for the encoder's next
switch interval to get it back: the loop stalled 1-3 s per snapshot under load, past the election timeout. A
child made by fork() encodes its copy-on-write image of the store with a GIL of its own and writes the bytes to
a pipe; the parent reads them in a thread (reads release the GIL). The child runs nothing but the encoding:
it closes every inherited descriptor but its pipe first (a listener or connection the parent closes must not
stay open in it), drops the parent's signal handling and never collects garbage (the collector could run
finalizers of gRPC objects whose locks another thread of the parent held at the fork), and ends with
`os._exit`. A child that fails makes `ChildFailed`; the caller encodes in a thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import struct
import threading
from collections.abc import Callable

_LEN = struct.Struct(">Q")  # the encoding's length, first on the pipe: a short read is a failed child
_FAILED = (1 << 64) - 1  # in place of a length: the child's error follows (its length, then its text)
_CHUNK = 1 << 20


class ChildFailed(Exception):
    pass


def _child(source: Callable[[], bytes], w: int) -> None:
    code = 70
    try:
        gc.disable()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        os.closerange(3, w)
        os.closerange(w + 1, os.sysconf("SC_OPEN_MAX"))
        try:
            data = source()
        except BaseException as e:  # said on the pipe, for the parent's log
            data, code = f"{type(e).__name__}: {e}"[:2000].encode(), 71
            _write(w, _LEN.pack(_FAILED) + _LEN.pack(len(data)) + data)
        else:
            _write(w, _LEN.pack(len(data)) + data)
            code = 0
    finally:
        os._exit(code)


def _write(w: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(w, view):]


def _read_exact(r: int, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = os.readv(r, [view[got:got + _CHUNK]])
        if n == 0:
            raise ChildFailed(f"the snapshot child ended after {got} of {size} bytes")
        got += n
    return bytes(buf)


def _read_all(r: int) -> bytes:
    (size,) = _LEN.unpack(_read_exact(r, _LEN.size))
    if size == _FAILED:
        (size,) = _LEN.unpack(_read_exact(r, _LEN.size))
        raise ChildFailed(_read_exact(r, size).decode(errors="replace"))
    return _read_exact(r, size)


def _reap(pid: int) -> int | None:
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:  # reaped elsewhere: the length check on the pipe decides
        return None


async def encode_in_child(source: Callable[[], bytes]) -> bytes:
    """`source()` run in a forked child; its bytes. Call it from the main thread (the child's only thread,
    which must be able to reset signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        raise ChildFailed("a snapshot child is forked from the main thread only")
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        raise ChildFailed(f"fork: {e}") from None
    if pid == 0:  # pragma: no cover (the child's coverage is not collected)
        os.close(r)
        _child(source, w)
    os.close(w)
    reader = asyncio.get_running_loop().run_in_executor(None, _read_all, r)
    try:
        data = await asyncio.shield(reader)
    except BaseException:
        # Cancelled, or the child failed: it must not outlive this, and the reading thread must be done with
        # the pipe before its descriptor is closed (a reused number would be read otherwise).
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await reader
        os.close(r)
        await asyncio.to_thread(_reap, pid)
        raise
    os.close(r)
    code = await asyncio.to_thread(_reap, pid)
    if code not in (0, None):
        raise ChildFailed(f"the snapshot child exited with {code}")
    return data
