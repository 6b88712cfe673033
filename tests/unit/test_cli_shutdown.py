"""The daemon's shutdown watchdog: a stop that hangs ends the process anyway, a stop that finishes does not."""

from __future__ import annotations

import threading

from shoal.cli import exit_after


def test_a_hung_stop_exits_with_status_1_after_the_timeout() -> None:
    called: list[int] = []
    fired = threading.Event()

    def fake_exit(code: int) -> None:
        called.append(code)
        fired.set()

    t = exit_after(0.05, fake_exit)
    assert fired.wait(10), "the watchdog never fired"
    t.join(10)
    assert called == [1]


def test_a_stop_that_finishes_cancels_the_watchdog() -> None:
    called: list[int] = []
    t = exit_after(0.2, called.append)
    t.cancel()
    t.join(10)
    assert not t.is_alive() and called == []
