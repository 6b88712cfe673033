"""Bounded polling for state that has no event to wait on: the one `wait_until` (and its async twin) of the tests.

    wait_until(lambda: node.info()["Swarm"]["LocalNodeState"] == "active", what="the node active")
    await eventually(lambda: controller.inspect(), what="the container inspected")

The condition is called until it returns a truthy value, which is returned. A condition may also be written
with asserts: an `AssertionError` counts as "not yet". At the deadline the last `AssertionError` is raised
again, or an `AssertionError` names what was waited for and the last value seen. Waiting on an event the
system offers (a store version, a log line, a watch) is better wherever there is one.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")

TIMEOUT = 30.0


def _timed_out(timeout: float, what: str, fn: object, last: Any, err: AssertionError | None) -> AssertionError:
    if err is not None:
        return err
    return AssertionError(f"timed out after {timeout}s waiting for {what or fn!r}: last value {last!r}")


def wait_until(fn: Callable[[], T], timeout: float = TIMEOUT, interval: float = 0.1, what: str = "") -> T:
    """Call `fn` until it returns a truthy value (returned) or `timeout` seconds pass (AssertionError naming
    `what` and the last value, or the last AssertionError `fn` raised)."""
    deadline = time.monotonic() + timeout
    while True:
        err: AssertionError | None = None
        last: Any = None
        try:
            last = fn()
        except AssertionError as e:  # a condition written with asserts
            err = e
        if err is None and last:
            return cast(T, last)
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, fn, last, err)
        time.sleep(interval)  # the interval of a bounded poll, not a synchronisation


async def eventually(fn: Callable[[], T | Awaitable[T]], timeout: float = TIMEOUT, interval: float = 0.05,
                     what: str = "") -> T:
    """`wait_until` on the event loop: `fn` may be a plain function or return an awaitable (a coroutine
    function), and the loop runs between calls."""
    deadline = time.monotonic() + timeout
    while True:
        err: AssertionError | None = None
        last: Any = None
        try:
            got = fn()
            last = await got if inspect.isawaitable(got) else got
        except AssertionError as e:
            err = e
        if err is None and last:
            return cast(T, last)
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, fn, last, err)
        await asyncio.sleep(interval)  # the interval of a bounded poll, not a synchronisation
