"""Injected time. The core never reads the wall clock or sleeps directly: it asks a Clock.

`SystemClock` is the real one; `VirtualClock` (shoal.testing.clock) drives simulations and unit tests
without real sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall time, used for timestamps shown to users)."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (used for timers and windows)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def until_or_sleep(aw: Awaitable[object], clock: Clock, timeout: float | None) -> None:
    """Wait for `aw` or for `timeout` seconds on `clock` (None: no limit), whichever comes first; what is left
    unfinished is cancelled. An exception `aw` ended with is raised."""
    waiter = asyncio.ensure_future(aw)
    sleeper = asyncio.ensure_future(clock.sleep(timeout)) if timeout is not None else None
    try:
        await asyncio.wait([f for f in (waiter, sleeper) if f is not None], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if sleeper is not None:
            sleeper.cancel()
    if waiter.done() and not waiter.cancelled():
        waiter.result()
