"""The event loop's thread comes first: gRPC's own threads run at a lower CPU priority than it.

A daemon's work that must not wait (Raft heartbeats and votes, the dispatcher's answers) runs on the asyncio
thread. gRPC's EventEngine keeps a pool of I/O threads (`event_engine`, grown by its `lifeguard` thread
whenever they are all busy, with no bound to set: grpc/grpc#41169) that under load reaches 80-200 threads in
a leader of thousands of nodes. Each runnable one gets the same share of the cores from the kernel as the
loop's thread, so on a loaded host the loop waited seconds for a core: longer than the election timeout,
and the followers elected another leader. Linux keeps a nice value per thread, so the daemon raises gRPC's
threads' by `RPC_NICE` (which needs no privilege) and leaves its own threads where they were: the loop gets a
core first, and gRPC's threads still run whenever the loop does not need one. Threads the `lifeguard` starts
inherit its value, so a scan every few seconds finds few new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RPC_NICE = 5  # how much lower gRPC's threads run than the daemon's own (each step is ~1.25x less CPU weight)
GRPC_THREADS = frozenset({"event_engine", "lifeguard", "grpc_global_tim"})  # /proc comm names (15 chars)
SCAN_PERIOD = 2.0  # seconds between looks for new gRPC threads

_TASKS = Path("/proc/self/task")


def _comm(tid: int) -> str:
    try:
        return (_TASKS / str(tid) / "comm").read_text().strip()
    except OSError:  # the thread ended
        return ""


def demote_rpc_threads(base: int | None = None, seen: set[int] | None = None) -> int:
    """Give each gRPC thread of this process the nice value `base + RPC_NICE` (`base`: this thread's); returns
    how many threads were changed. Threads that are not gRPC's keep theirs. Threads in `seen` were looked at
    before and are skipped (the set is updated): a scan then reads only new threads' names."""
    if base is None:
        base = os.getpriority(os.PRIO_PROCESS, 0)
    want = min(base + RPC_NICE, 19)
    changed = 0
    try:
        tids = {int(t) for t in os.listdir(_TASKS)}
    except OSError:  # no /proc: nothing to do
        return 0
    if seen is not None:
        seen &= tids  # ended threads go: their numbers may come back as new threads
        fresh = tids - seen
        seen |= tids
        tids = fresh
    for tid in tids:
        if _comm(tid) not in GRPC_THREADS:
            continue
        with contextlib.suppress(OSError):  # ended meanwhile, or a value we may not lower (another's doing)
            if os.getpriority(os.PRIO_PROCESS, tid) < want:
                os.setpriority(os.PRIO_PROCESS, tid, want)
                changed += 1
    return changed


async def keep_loop_first(period: float = SCAN_PERIOD) -> None:
    """Run for the daemon's life: gRPC threads started since the last look get their lower priority."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    total = 0
    seen: set[int] = set()
    while True:
        total += await asyncio.to_thread(demote_rpc_threads, base, seen)
        log.debug("%d gRPC thread(s) run at nice %+d so far", total, RPC_NICE)
        await asyncio.sleep(period)
