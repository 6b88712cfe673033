"""The manager's leader-only loops: how a term ends when a loop's write is refused, and when a loop fails."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from shoal.clock import SystemClock
from shoal.manager.manager import Manager
from shoal.manager.raft.node import ProposalLost
from shoal.testing.sim import memory_store


async def _two_terms(error: Exception) -> Manager:
    """Run a manager whose extra leader loop raises `error` in its first term; return once a second term ran."""
    mgr = Manager(memory_store(SystemClock()), SystemClock(), random.Random(1))
    calls = 0
    second = asyncio.Event()

    async def loop() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        second.set()
        await asyncio.Event().wait()

    mgr.add_leader_loop("test-loop", loop)
    mgr.start(leader=True)
    try:
        await asyncio.wait_for(second.wait(), 10)
    finally:
        await mgr.stop()
    assert mgr.leader_terms == 2
    return mgr


async def test_a_write_refused_for_lost_leadership_ends_the_term_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal.manager.manager")
    await _two_terms(ProposalLost("raft: leadership lost; the proposal may or may not commit"))
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "shoal.manager.manager"]
    assert (logging.INFO, "the leader-only loops stopped: raft: leadership lost; the proposal may or may not "
            "commit") in msgs
    assert not [m for lvl, m in msgs if lvl >= logging.ERROR]


async def test_a_loop_that_fails_otherwise_is_logged_as_an_error_and_restarted(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal.manager.manager")
    await _two_terms(ValueError("a bug"))
    errors = [r for r in caplog.records if r.name == "shoal.manager.manager" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["a leader-only loop failed"]
    assert errors[0].exc_info is not None and "a bug" in repr(errors[0].exc_info[1])
