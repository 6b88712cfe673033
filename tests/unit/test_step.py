"""The step function, driven against the in-tree fake controller."""

from __future__ import annotations

import asyncio
import dataclasses

from shoal.agent.exec.step import (
    HEALTH_POLL_INTERVAL,
    grace_period,
    is_done,
    is_paused,
    step,
)
from shoal.errors import FatalError, TemporaryError
from shoal.model.objects import (
    SECOND,
    ContainerSpec,
    HealthConfig,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.model.state import TaskState
from shoal.testing.fakeexec import FakeBehavior, FakeController, FakeExecutor

UNHEALTHY = "task: non-zero exit (143): dockerexec: unhealthy container"


class StepClock:
    """Virtual time: sleeping advances it and yields once to the loop."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept = 0.0

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        self.slept += seconds
        await asyncio.sleep(0)


def mktask(desired: TaskState = TaskState.RUNNING, state: TaskState = TaskState.ASSIGNED,
           container: ContainerSpec | None = None) -> Task:
    return Task(id="t1", spec=TaskSpec(container=container or ContainerSpec(image="busybox")),
                status=TaskStatus(state=state, message="assigned"), desired_state=desired)


async def drive(task: Task, ctlr: FakeController, clock: StepClock,
                limit: int = 20) -> tuple[Task, list[TaskStatus]]:
    seen: list[TaskStatus] = []
    for _ in range(limit):
        if is_paused(task):
            break
        st = await step(task, ctlr, clock)
        if st == task.status:
            break  # a retry; the agent would back off here
        seen.append(st)
        task = dataclasses.replace(task, status=st)
    return task, seen


async def test_happy_path_to_complete() -> None:
    clock = StepClock()
    task = mktask()
    ctlr = FakeController(task, behavior=FakeBehavior(exit_code=0))
    task, seen = await drive(task, ctlr, clock)
    assert [(s.state, s.message) for s in seen] == [
        (TaskState.ACCEPTED, "accepted"), (TaskState.PREPARING, "preparing"), (TaskState.READY, "prepared"),
        (TaskState.STARTING, "starting"), (TaskState.RUNNING, "started"), (TaskState.COMPLETE, "finished")]
    assert [c for c in ctlr.calls if c != "inspect"] == ["prepare", "start", "wait"]
    assert task.status.err == ""
    assert task.status.container is not None and task.status.container.exit_code == 0
    assert task.status.container.container_id == "fake-t1"
    assert task.status.timestamp == clock.now()
    assert is_done(task)


async def test_non_zero_exit_fails_with_code() -> None:
    clock = StepClock()
    task = mktask()
    ctlr = FakeController(task, behavior=FakeBehavior(exit_code=3))
    task, _ = await drive(task, ctlr, clock)
    assert task.status.state == TaskState.FAILED
    assert task.status.err == "task: non-zero exit (3)"
    assert task.status.container is not None and task.status.container.exit_code == 3


async def test_an_oom_kill_is_kept_in_the_container_status() -> None:
    clock = StepClock()
    task = mktask()
    ctlr = FakeController(task, behavior=FakeBehavior(exit_code=137, oom_killed=True))
    task, _ = await drive(task, ctlr, clock)
    assert task.status.state == TaskState.FAILED
    assert task.status.err == "task: non-zero exit (137)"  # the text dockerd and swarmkit show
    assert task.status.container is not None and task.status.container.oom_killed
    clean = FakeController(mktask(), behavior=FakeBehavior(exit_code=3))
    done, _ = await drive(mktask(), clean, clock)
    assert done.status.container is not None and done.status.container.oom_killed is None


async def test_desired_ready_stops_at_ready_then_proceeds() -> None:
    clock = StepClock()
    task = mktask(desired=TaskState.READY)
    ctlr = FakeController(task, behavior=FakeBehavior(exit_code=None))
    task, _ = await drive(task, ctlr, clock)
    assert task.status.state == TaskState.READY
    assert is_paused(task) and not is_done(task)
    # Stepping anyway changes nothing (and touches nothing).
    calls = list(ctlr.calls)
    assert await step(task, ctlr, clock) == task.status
    assert ctlr.calls == calls
    task = dataclasses.replace(task, desired_state=TaskState.RUNNING)
    assert not is_paused(task)
    task = dataclasses.replace(task, status=await step(task, ctlr, clock))
    assert task.status.state == TaskState.STARTING
    task = dataclasses.replace(task, status=await step(task, ctlr, clock))
    assert task.status.state == TaskState.RUNNING
    assert task.status.container is not None and task.status.container.pid == 4242


async def test_temporary_error_retries_in_place() -> None:
    clock = StepClock()
    task = mktask(state=TaskState.PREPARING)
    ctlr = FakeController(task, behavior=FakeBehavior(errors={"prepare": [TemporaryError("pull failed")]}))
    st = await step(task, ctlr, clock)
    assert st.state == TaskState.PREPARING and st.err == "pull failed"
    task = dataclasses.replace(task, status=st)
    st = await step(task, ctlr, clock)
    assert st.state == TaskState.READY and st.err == "" and st.message == "prepared"


async def test_fatal_before_starting_rejects() -> None:
    clock = StepClock()
    task = mktask(state=TaskState.PREPARING)
    ctlr = FakeController(task, behavior=FakeBehavior(errors={"prepare": [FatalError("no such image")]}))
    st = await step(task, ctlr, clock)
    assert st.state == TaskState.REJECTED and st.err == "no such image"


async def test_any_error_at_starting_fails() -> None:
    clock = StepClock()
    task = mktask(state=TaskState.STARTING)
    ctlr = FakeController(task, behavior=FakeBehavior(errors={"start": [RuntimeError("exec format error")]}))
    await ctlr.prepare()
    st = await step(task, ctlr, clock)
    assert st.state == TaskState.FAILED and st.err == "exec format error"


async def test_shutdown_uses_grace_period() -> None:
    clock = StepClock()
    spec = ContainerSpec(image="x", stop_grace_period=3 * SECOND)
    task = mktask(desired=TaskState.RUNNING, container=spec)
    ctlr = FakeController(task, behavior=FakeBehavior(exit_code=None))
    # Run up to RUNNING, then the wait blocks: the agent cancels it when the desired state changes.
    for _ in range(5):
        task = dataclasses.replace(task, status=await step(task, ctlr, clock))
    assert task.status.state == TaskState.RUNNING
    waiting = asyncio.ensure_future(step(task, ctlr, clock))
    await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()
    task = dataclasses.replace(task, desired_state=TaskState.SHUTDOWN)
    st = await step(task, ctlr, clock)
    assert (st.state, st.message) == (TaskState.SHUTDOWN, "shutdown")
    assert ctlr.last_grace_period == 3.0
    assert st.container is not None and st.container.exit_code == 143
    task = dataclasses.replace(task, status=st)
    assert is_done(task)
    assert await step(task, ctlr, clock) == st  # terminal: nothing more


async def test_default_grace_period() -> None:
    assert grace_period(mktask()) == 10.0


async def test_shutdown_before_start_and_remove() -> None:
    clock = StepClock()
    task = mktask(desired=TaskState.REMOVE, state=TaskState.READY)
    ctlr = FakeController(task)
    await ctlr.prepare()
    st = await step(task, ctlr, clock)
    assert st.state == TaskState.SHUTDOWN
    task = dataclasses.replace(task, status=st)
    assert not is_done(task)
    st = await step(task, ctlr, clock)
    assert st.state == TaskState.SHUTDOWN and st.message == "removed"
    assert ctlr.removed
    task = dataclasses.replace(task, status=st)
    assert is_done(task)
    assert await step(task, ctlr, clock) == st
    assert ctlr.calls.count("remove") == 1


async def test_health_gates_running() -> None:
    clock = StepClock()
    hc = HealthConfig(test=("CMD", "true"), interval=SECOND)
    task = mktask(state=TaskState.STARTING, container=ContainerSpec(image="x", healthcheck=hc))
    ctlr = FakeController(task, behavior=FakeBehavior(exit_code=None, healthy=[None, None, None, True]))
    await ctlr.prepare()
    st = await step(task, ctlr, clock)
    assert (st.state, st.message) == (TaskState.RUNNING, "started")
    assert st.healthy is True
    assert clock.slept == 3 * HEALTH_POLL_INTERVAL


async def test_unhealthy_while_starting_fails() -> None:
    clock = StepClock()
    hc = HealthConfig(test=("CMD-SHELL", "exit 1"), retries=1)
    task = mktask(state=TaskState.STARTING, container=ContainerSpec(image="x", healthcheck=hc))
    ctlr = FakeController(task, behavior=FakeBehavior(exit_code=None, healthy=[None, False],
                                                      unhealthy=UNHEALTHY))
    await ctlr.prepare()
    st = await step(task, ctlr, clock)
    assert st.state == TaskState.FAILED and st.err == UNHEALTHY
    assert st.container is not None and st.container.exit_code == 143


async def test_unhealthy_while_running_fails() -> None:
    clock = StepClock()
    task = mktask(state=TaskState.RUNNING)
    ctlr = FakeController(task, behavior=FakeBehavior(exit_code=None, unhealthy=UNHEALTHY))
    await ctlr.prepare()
    await ctlr.start()
    st = await step(task, ctlr, clock)
    assert st.state == TaskState.FAILED and st.err == UNHEALTHY


async def test_no_health_check_means_no_gate() -> None:
    clock = StepClock()
    hc = HealthConfig(test=("NONE",))
    task = mktask(state=TaskState.STARTING, container=ContainerSpec(image="x", healthcheck=hc))
    ctlr = FakeController(task, behavior=FakeBehavior(exit_code=None, healthy=[None]))
    await ctlr.prepare()
    st = await step(task, ctlr, clock)
    assert st.state == TaskState.RUNNING and clock.slept == 0


async def test_run_for_uses_clock_and_executor_lists_tasks() -> None:
    clock = StepClock()
    ex = FakeExecutor(behavior=FakeBehavior(exit_code=0, run_for=30.0), clock=clock)
    task = mktask()
    ctlr = ex.controller(task, deps=_NoDeps())
    assert ex.controller(task, deps=_NoDeps()) is ctlr
    task, _ = await drive(task, ctlr, clock)
    assert task.status.state == TaskState.COMPLETE
    assert clock.slept == 30.0
    assert await ex.list_task_ids() == {"t1"}
    desc = await ex.describe()
    assert desc.hostname == "fake-node" and desc.platform.os == "linux"


async def test_timestamp_only_changes_with_status() -> None:
    clock = StepClock()
    task = mktask(desired=TaskState.ACCEPTED, state=TaskState.ACCEPTED)
    task = dataclasses.replace(task, status=dataclasses.replace(task.status, timestamp=5.0))
    ctlr = FakeController(task)
    st = await step(task, ctlr, clock)
    assert st.timestamp == 5.0


class _NoDeps:
    def secret(self, secret_id: str) -> None:
        return None

    def config(self, config_id: str) -> None:
        return None
