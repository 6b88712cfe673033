"""VirtualClock: sleeps end in deadline order at exact virtual times, and auto-jump only moves time
when the loop is idle."""

from __future__ import annotations

import asyncio
import time

import pytest

from shoal.testing.clock import VirtualClock, settle


async def test_advance_wakes_sleepers_in_order_at_their_deadlines() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append((name, clock.elapsed))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 3.0), ("a", 1.0), ("b", 2.0))]
    await clock.advance(1.5)
    assert woke == [("a", 1.0)]
    assert clock.elapsed == 1.5
    await clock.advance(10)
    assert woke == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert clock.elapsed == 11.5
    await asyncio.gather(*tasks)


async def test_now_and_monotonic_move_together() -> None:
    clock = VirtualClock(wall_start=100.0, monotonic_start=5.0)
    await clock.advance(2.5)
    assert (clock.now(), clock.monotonic()) == (102.5, 7.5)


async def test_cancelled_sleeper_is_skipped() -> None:
    clock = VirtualClock()
    t = asyncio.create_task(clock.sleep(5))
    await settle()
    t.cancel()
    await clock.advance(10)
    assert clock.next_deadline() is None
    assert t.cancelled()


async def test_autojump_runs_minutes_instantly_and_chains_sleeps() -> None:
    clock = VirtualClock()
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await clock.sleep(1.0)
            ticks.append(clock.elapsed)

    t0 = time.monotonic()
    async with clock.autojump():
        task = asyncio.create_task(ticker())
        await clock.sleep(600)
        task.cancel()
    assert time.monotonic() - t0 < 5
    assert ticks[:3] == [1.0, 2.0, 3.0]
    assert len(ticks) in (599, 600)


async def test_autojump_waits_while_something_is_runnable() -> None:
    """Time does not move while a task is busy (yielding but runnable), only once it blocks."""
    clock = VirtualClock()
    seen: list[float] = []

    async def busy() -> None:
        for _ in range(200):
            seen.append(clock.elapsed)
            await asyncio.sleep(0)

    async with clock.autojump():
        sleeper = asyncio.create_task(clock.sleep(1.0))
        await busy()
        assert set(seen) == {0.0}
        await sleeper
        assert clock.elapsed == 1.0


async def test_advance_refuses_under_autojump() -> None:
    clock = VirtualClock()
    async with clock.autojump():
        with pytest.raises(RuntimeError):
            await clock.advance(1)
        await clock.run_for(1)
    assert clock.elapsed == 1.0
