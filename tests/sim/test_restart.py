"""Restart policy under virtual time: condition, delay, max attempts, window, independence of services."""

from __future__ import annotations

import itertools

from shoal.model.objects import SECOND, RestartPolicy
from shoal.model.state import TaskState
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, on_service, service_spec

EXIT0 = FakeBehavior(exit_code=0, run_for=1.0)
EXIT1 = FakeBehavior(exit_code=1, run_for=1.0)


def policy(condition: str = "any", *, delay: float = 0.0, max_attempts: int = 0,
           window: float = 0.0) -> RestartPolicy:
    return RestartPolicy(condition=condition, delay=int(delay * SECOND), max_attempts=max_attempts,
                         window=int(window * SECOND))


async def _outcome(condition: str, behavior: FakeBehavior) -> list[tuple[TaskState, TaskState]]:
    """Run one replica under `condition` with `behavior`; return (desired, state) of every task."""
    async with SimCluster.started(nodes=1) as sim:
        sim.behave(on_service("s", behavior))
        svc = await sim.create_service(service_spec("s", restart=policy(condition)))
        await sim.wait_until(lambda: any(t.status.state >= TaskState.COMPLETE for t in sim.tasks(svc.id)))
        await sim.run_for(30)
        return [(t.desired_state, t.status.state) for t in sim.tasks(svc.id)]


async def test_condition_none_never_restarts() -> None:
    # Not replaced, yet shut down as dockerd shows it (swarmkit's Supervisor.Restart always does so).
    assert await _outcome("none", EXIT1) == [(TaskState.SHUTDOWN, TaskState.FAILED)]
    assert await _outcome("none", EXIT0) == [(TaskState.SHUTDOWN, TaskState.COMPLETE)]


async def test_condition_on_failure() -> None:
    # exit 0: complete and not replaced (desired Shutdown, as dockerd)
    assert await _outcome("on-failure", EXIT0) == [(TaskState.SHUTDOWN, TaskState.COMPLETE)]
    # exit 1: replaced again and again
    out = await _outcome("on-failure", EXIT1)
    assert len(out) > 3 and out[-1][0] == TaskState.RUNNING
    assert all(d == TaskState.SHUTDOWN and s == TaskState.FAILED for d, s in out[:-1])


async def test_condition_any_restarts_clean_exits_too() -> None:
    out = await _outcome("any", EXIT0)
    assert len(out) > 3
    assert all(s == TaskState.COMPLETE for _, s in out[:-1])


async def test_delay_is_honoured() -> None:
    async with SimCluster.started(nodes=1, history_limit=50) as sim:
        sim.behave(on_service("s", EXIT1))
        svc = await sim.create_service(service_spec("s", restart=policy(delay=7.0)))
        await sim.wait_until(lambda: len(sim.tasks(svc.id)) >= 4)
        await sim.run_for(1)
        tasks = sorted(sim.tasks(svc.id), key=lambda t: t.restart_count)
        for prev, nxt in itertools.pairwise(tasks):
            failed_at = sim.first_time(lambda t, i=prev.id: t.id == i and t.status.state == TaskState.FAILED)
            started_at = sim.first_time(lambda t, i=nxt.id: t.id == i and t.status.state == TaskState.RUNNING)
            if started_at is None:
                continue
            assert failed_at is not None
            assert 7.0 <= started_at - failed_at < 7.5, (failed_at, started_at)
            # the replacement is prepared during the delay but held at READY
            ready_at = sim.first_time(lambda t, i=nxt.id: t.id == i and t.status.state == TaskState.READY)
            assert ready_at is not None and ready_at - failed_at < 1.0


async def test_max_attempts_then_left_failed() -> None:
    async with SimCluster.started(nodes=1, history_limit=50) as sim:
        sim.behave(on_service("s", EXIT1))
        svc = await sim.create_service(service_spec("s", restart=policy(max_attempts=2, delay=1.0)))
        await sim.wait_until(lambda: len(sim.tasks(svc.id)) == 3 and
                             all(t.status.state == TaskState.FAILED for t in sim.tasks(svc.id)))
        await sim.run_for(120)
        tasks = sim.tasks(svc.id)
        assert len(tasks) == 3  # the first run and two restarts
        last = max(tasks, key=lambda t: t.restart_count)
        assert last.restart_count == 2 and last.status.state == TaskState.FAILED
        assert last.desired_state == TaskState.SHUTDOWN  # left failed, its slot not refilled


async def test_window_counts_only_recent_restarts() -> None:
    # Tasks crash every 6 s; at most 2 restarts per 10 s window: that never stops them.
    async with SimCluster.started(nodes=1, history_limit=50) as sim:
        sim.behave(on_service("s", FakeBehavior(exit_code=1, run_for=6.0)))
        svc = await sim.create_service(service_spec("s", restart=policy(max_attempts=2, window=10.0)))
        await sim.wait_until(lambda: len(sim.tasks(svc.id)) >= 6, timeout=60)


async def test_window_exhausted_is_final() -> None:
    # Tasks crash every 3 s: the third crash lands with 2 restarts inside the 10 s window -> left failed,
    # and it stays failed after the window has passed (the decision is made once, at the failure).
    async with SimCluster.started(nodes=1, history_limit=50) as sim:
        sim.behave(on_service("s", FakeBehavior(exit_code=1, run_for=3.0)))
        svc = await sim.create_service(service_spec("s", restart=policy(max_attempts=2, window=10.0)))
        await sim.wait_until(lambda: len(sim.tasks(svc.id)) == 3 and
                             all(t.status.state == TaskState.FAILED for t in sim.tasks(svc.id)))
        await sim.run_for(15)
        # the orchestrator looks at the service again: a new node, then a new leader's full sweep
        await sim.add_node()
        await sim.run_for(5)
        await sim.restart_leader()
        await sim.run_for(15)
        assert len(sim.tasks(svc.id)) == 3


async def test_restart_delay_of_one_service_does_not_block_another() -> None:
    async with SimCluster.started(nodes=2, history_limit=50) as sim:
        sim.behave(on_service("slow", FakeBehavior(exit_code=1, run_for=1.0)))
        sim.behave(on_service("fast", FakeBehavior(exit_code=1, run_for=2.0)))
        slow = await sim.create_service(service_spec("slow", restart=policy(delay=60.0)))
        fast = await sim.create_service(service_spec("fast", restart=policy(delay=1.0)))
        # while slow's replacement waits out its 60 s, fast restarts every ~3 s
        await sim.wait_until(lambda: len(sim.tasks(fast.id)) >= 10, timeout=40)
        assert len(sim.tasks(slow.id)) == 2
        assert not any(t.status.state == TaskState.RUNNING for t in sim.tasks(slow.id) if t.restart_count)
        await sim.wait_until(lambda: any(t.status.state >= TaskState.RUNNING for t in sim.tasks(slow.id)
                                         if t.restart_count == 1))
        started = sim.first_time(lambda t: t.service_id == slow.id and t.restart_count == 1
                                 and t.status.state == TaskState.RUNNING)
        assert started is not None and 61.0 <= started < 61.5
