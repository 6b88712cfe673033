"""Injected time. The core never reads the wall clock or sleeps directly: it asks a Clock.

`SystemClock` is the real one; `VirtualClock` (shoal.testing.clock) drives simulations and unit tests
without real sleeps.
"""

from __future__ import annotations

import asyncio
import time
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
