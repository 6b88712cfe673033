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


def checkpoint() -> None:
    """Raise CancelledError if the current task has been asked to stop: a call that caught the cancellation and
    returned normally (some libraries do) leaves the request outstanding, and a task that goes on to wait for
    something that never comes would then never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


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
