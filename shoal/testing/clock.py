"""Virtual time for asyncio: a `Clock` whose sleeps end when the test (or the auto-jump driver) says so.

`VirtualClock` implements `shoal.clock.Clock`. `now()` (wall) and `monotonic()` move together and only
when the clock is advanced; `sleep(s)` parks the caller on a future keyed by its virtual deadline.

Two ways to move time:

- by hand: `await clock.advance(s)` lets the loop settle, then wakes the sleepers in deadline order
  (letting the loop settle after each deadline), and ends exactly `s` seconds later;
- automatically (trio's "autojump" idea, from `trio/_core/_mock_clock.py`): inside
  `async with clock.autojump():` a low-priority driver task jumps time to the earliest deadline whenever
  the loop is idle, so `await clock.sleep(30)` in a test runs 30 virtual seconds of the whole system in
  milliseconds. `await clock.run_for(s)` works in both modes.

How idleness is detected (the one trick here): asyncio keeps the callbacks that are ready to run in
`loop._ready` (a deque; a private attribute of the pure-Python event loop, the one used in tests, not
uvloop). A task that yields with `await asyncio.sleep(0)` re-enters that deque *behind* every callback
already in it. So when the driver resumes and finds `loop._ready` empty, every other task is blocked on a
future that nothing runnable will complete, i.e. all that is left are virtual sleepers (or I/O). The driver
requires `IDLE_ROUNDS` such observations in a row, then jumps. Caveat: work done in threads
(`run_in_executor`, `to_thread`) or on real sockets is invisible to this check, so virtual time may run
ahead of it; the simulation uses neither (the in-memory store proposer and the fake executor are pure
asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator

from shoal.tasks import cancel_and_wait

IDLE_ROUNDS = 3  # consecutive empty-ready-queue observations before the loop counts as idle
MAX_SETTLE_ROUNDS = 200_000  # a loop that never goes idle (a livelock) is a bug worth failing on


class LoopNeverIdle(RuntimeError):
    pass


def _ready_count(loop: asyncio.AbstractEventLoop) -> int:
    ready = getattr(loop, "_ready", None)
    if ready is None:
        raise RuntimeError("VirtualClock needs the standard asyncio event loop (it reads loop._ready)")
    return len(ready)


async def settle(rounds: int = IDLE_ROUNDS) -> None:
    """Return once every other task in the loop is blocked (see the module docstring)."""
    loop = asyncio.get_running_loop()
    idle = 0
    for _ in range(MAX_SETTLE_ROUNDS):
        await asyncio.sleep(0)
        if _ready_count(loop) == 0:
            idle += 1
            if idle >= rounds:
                return
        else:
            idle = 0
    raise LoopNeverIdle(f"the event loop did not go idle within {MAX_SETTLE_ROUNDS} rounds")


class VirtualClock:
    """A `Clock` whose time only moves when advanced (by hand or by the auto-jump driver)."""

    def __init__(self, *, wall_start: float = 1_700_000_000.0, monotonic_start: float = 1000.0) -> None:
        self._wall0 = wall_start
        self._mono0 = monotonic_start
        self._elapsed = 0.0
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._new_sleeper = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self.jumps = 0  # how many times time moved (for tests of the clock itself)

    # --- the Clock protocol --------------------------------------------------------------------------

    def now(self) -> float:
        return self._wall0 + self._elapsed

    def monotonic(self) -> float:
        return self._mono0 + self._elapsed

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the clock was made."""
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._seq), fut))
        self._new_sleeper.set()
        await fut  # cancelled futures stay in the heap and are skipped when time moves

    # --- moving time ---------------------------------------------------------------------------------

    def _prune(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def next_deadline(self) -> float | None:
        """Elapsed time of the earliest pending sleeper, if any."""
        self._prune()
        return self._sleepers[0][0] if self._sleepers else None

    def _jump_to(self, t: float) -> None:
        """Set elapsed time to `t` (never backwards) and wake every sleeper due by then."""
        if t > self._elapsed:
            self._elapsed = t
            self.jumps += 1
        while self._sleepers and self._sleepers[0][0] <= self._elapsed:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking sleepers deadline by deadline, each after the loop
        settled, so everything that happens in between happens at the right virtual instant."""
        if self._driver is not None:
            raise RuntimeError("advance() while autojump is on; use run_for()")
        target = self._elapsed + max(0.0, seconds)
        while True:
            await settle()
            nxt = self.next_deadline()
            if nxt is None or nxt > target:
                break
            self._jump_to(nxt)
        self._jump_to(target)
        await settle()

    async def run_for(self, seconds: float) -> None:
        """Let the whole loop run for `seconds` of virtual time, in either mode."""
        if self._driver is not None:
            await self.sleep(seconds)
        else:
            await self.advance(seconds)

    # --- auto-jump -----------------------------------------------------------------------------------

    async def _drive(self) -> None:
        while True:
            if self.next_deadline() is None:
                self._new_sleeper.clear()
                await self._new_sleeper.wait()
                continue
            await settle()
            nxt = self.next_deadline()
            if nxt is not None:
                self._jump_to(nxt)

    def start_autojump(self) -> None:
        if self._driver is None:
            self._driver = asyncio.create_task(self._drive(), name="virtual-clock-autojump")

    async def stop_autojump(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            await cancel_and_wait(driver)

    @contextlib.asynccontextmanager
    async def autojump(self) -> AsyncIterator[VirtualClock]:
        """Jump to the next deadline whenever the loop is idle, for the duration of the block."""
        self.start_autojump()
        try:
            yield self
        finally:
            await self.stop_autojump()
