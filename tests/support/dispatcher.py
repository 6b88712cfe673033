"""A leader's dispatcher running on an in-memory store under virtual time (the dispatcher unit tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from shoal.manager.dispatcher import Dispatcher
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.clock import VirtualClock
from shoal.testing.sim import memory_store


@contextlib.asynccontextmanager
async def running_dispatcher(seed: Callable[[Tx], object]
                             ) -> AsyncIterator[tuple[VirtualClock, MemoryStore, Dispatcher]]:
    """The store seeded by `seed`, its dispatcher running (as on a leader) until the block ends."""
    clock = VirtualClock()
    async with clock.autojump():
        store = memory_store(clock)
        await store.update(seed)
        d = Dispatcher(store, clock)
        runner = asyncio.ensure_future(d.run())
        await clock.sleep(0.01)
        try:
            yield clock, store, d
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
