"""Garbage-collector settings for a long-running daemon whose heap is mostly long-lived cluster objects.

CPython 3.11's defaults (700, 10, 10) collect the young generation every 700 allocations and the whole heap
whenever enough objects have survived. A manager creating tasks allocates millions of small objects that live
on (every task, its spec, its status), so with the defaults it ran a full collection every ~2,500 tasks:
39 full collections, up to 130 ms each and 17 % of the time, while placing 100,000 tasks (bench/manager_path.py).
A pause that long also delays Raft heartbeats and dispatcher replies. Collecting the young generation every
10,000 allocations instead lets almost everything that will die do so by reference counting first, so far
less is promoted: the same run had 1-2 full collections and placed tasks ~25 % faster, while a young collection
stays under ~10 ms and a middle one under ~100 ms (at 50,000 the middle generation grew to a million objects
and its collections took 300-500 ms in a loaded daemon, long enough to cost elections). Objects that exist
once start-up is done (modules, the restored store) are frozen out of collection altogether.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

THRESHOLDS = (10_000, 10, 10)
SLOW_PAUSE = 0.25  # seconds: a collection this long is logged (it can cost a Raft election)

_started = 0.0


def _watch(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    took = time.perf_counter() - _started
    if took >= SLOW_PAUSE:
        log.warning("garbage collection of generation %d paused the process for %.0f ms (%d objects collected)",
                    info.get("generation", -1), took * 1000, info.get("collected", 0))


def tune() -> None:
    """Apply the daemon's thresholds and log slow collections (idempotent)."""
    gc.set_threshold(*THRESHOLDS)
    if _watch not in gc.callbacks:
        gc.callbacks.append(_watch)


def freeze() -> None:
    """Move everything alive now (start-up's objects) out of the collector's reach."""
    gc.collect()
    gc.freeze()
