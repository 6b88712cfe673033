"""How the daemon's process gives memory back to the system.

glibc serves a block of 128 KiB or more with its own mmap and unmaps it when freed, but after the first such
free it raises that threshold to the freed block's size (up to 32 MiB), so later large blocks (configs and
secrets of hundreds of KiB, Raft entries and snapshots of MiB) come from the heap, whose free space is kept
rather than returned: a manager that stored and then removed 40 MiB of configs stayed 100+ MiB larger for good.
Fixing the threshold keeps large blocks in mmap, returned to the system as soon as they are freed.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt(3) parameter number in glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, now kept instead of growing


def return_large_frees_to_os() -> bool:
    """Fix glibc's mmap threshold for this process; False (and nothing changed) on a libc without mallopt."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this libc: the allocator's defaults stay")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
