"""Small asyncio helpers shared by the components."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for it to finish, swallowing its outcome but never a cancellation of the caller
    (suppressing CancelledError blindly would eat ours if we are cancelled while waiting)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        pass
