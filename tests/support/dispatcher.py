"""A leader's dispatcher running on an in-memory store under virtual time (the dispatcher unit tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from shoal.manager.dispatcher import Dispatcher
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.clock import VirtualClock
from shoal.testing.sim import memory_store

T = TypeVar("T")


@contextlib.asynccontextmanager
async def running_leader(seed: Callable[[Tx], object], make: Callable[[MemoryStore, VirtualClock], T],
                         dispatcher: Callable[[T], Dispatcher]) -> AsyncIterator[tuple[VirtualClock, MemoryStore, T]]:
    """The store seeded by `seed`, `make(store, clock)` built on it and its dispatcher (`dispatcher(made)`)
    running as on a leader until the block ends."""
    clock = VirtualClock()
    async with clock.autojump():
        store = memory_store(clock)
        await store.update(seed)
        made = make(store, clock)
        runner = asyncio.ensure_future(dispatcher(made).run())
        await clock.sleep(0.01)
        try:
            yield clock, store, made
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner


@contextlib.asynccontextmanager
async def running_dispatcher(seed: Callable[[Tx], object]
                             ) -> AsyncIterator[tuple[VirtualClock, MemoryStore, Dispatcher]]:
    """The store seeded by `seed`, its dispatcher running (as on a leader) until the block ends."""
    async with running_leader(seed, Dispatcher, lambda d: d) as env:
        yield env
