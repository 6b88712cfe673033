"""Small asyncio helpers shared by the components: the one way to stop a task.

Suppressing CancelledError around `await task` would also swallow a cancellation of the caller itself (it is
raised at the same await), so every component stops its tasks through these."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def reap(task: asyncio.Future[Any]) -> None:
    """Wait for a task that was cancelled (or has ended), swallowing its outcome but never a cancellation of
    the caller."""
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        pass


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for it to finish (see `reap`)."""
    task.cancel()
    await reap(task)


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task first (they stop side by side), then wait for each (see `reap`)."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        await reap(t)
