"""The one step function that drives any `Controller` (swarmkit's `agent/exec/controller.go` `Do`).

`step(task, ctlr, clock)` performs ONE operation on the controller, chosen from the task's desired state
and its current observed state, and returns the task's next observed `TaskStatus`. The agent calls it in
a loop per task, reporting every status it returns and putting it back on the task before the next call:

    desired >= SHUTDOWN, not terminal   shutdown(grace)        -> SHUTDOWN  "shutdown"
    desired == REMOVE, terminal         remove()               -> same state, message "removed" (done)
    NEW/PENDING/ASSIGNED                (nothing)              -> ACCEPTED  "accepted"
    ACCEPTED                            (nothing)              -> PREPARING "preparing"
    PREPARING                           prepare()              -> READY     "prepared"
    READY                               (nothing)              -> STARTING  "starting"
    STARTING                            start() [+ health gate] -> RUNNING   "started"
    RUNNING                             wait()                 -> COMPLETE  "finished"
                                                                or FAILED   err "task: non-zero exit (N)"

Pausing: a task never moves past its desired state through the "pause" states (ASSIGNED, ACCEPTED, READY):
a task whose desired state is READY (start-first/stop-first updates) stops at READY. PREPARING, STARTING
and RUNNING always proceed (their operation is already under way), as in swarmkit. `is_paused(task)` tells
the agent the step would do nothing until the desired state changes; `is_done(task)` that the task needs
no more steps at all.

Errors: `TemporaryError` keeps the state (the returned status carries the error in `err`, and the agent
retries later with a backoff); `FatalError` or any other exception ends the task: REJECTED before
STARTING, FAILED at or after it, with `err` = the error's message. `asyncio.CancelledError` propagates.

Health: when the task's container spec has a health check (`test` not empty and not `["NONE"]`), the
STARTING step starts the process and then stays in that step, polling `inspect().healthy` every
`HEALTH_POLL_INTERVAL` seconds of the injected clock, until it is True (-> RUNNING "started": a task is
running only once healthy), False or the process has exited (both: the step then calls `wait()` and
reports its outcome, normally FAILED). Health checks inherited from an image are not gated here (the docker
executor's `start()` may block until healthy itself, as dockerd does). Once RUNNING, an unhealthy task is
reported by the controller's `wait()` raising `FatalError` (dockerd's text is
"task: non-zero exit (N): dockerexec: unhealthy container"), which fails the task with that `err`.

Blocking: `wait()` (RUNNING) and the health gate (STARTING) block for as long as the process runs. The agent
must run each task's steps in their own asyncio task and cancel the step when the desired state changes
(e.g. to SHUTDOWN), then call `step` again with the new desired state.

The container status (`ContainerStatus`: id, pid, exit code) and `healthy` are filled from
`ctlr.inspect()` once the task is at or past STARTING. The step is pure apart from the controller calls and
`clock.now()` for the status timestamp (set only when the status changed).
"""

from __future__ import annotations

import dataclasses

from shoal.agent.exec.protocol import Controller, ExitStatus
from shoal.clock import Clock
from shoal.errors import TemporaryError
from shoal.model.objects import SECOND, ContainerStatus, Task, TaskStatus
from shoal.model.state import TaskState

DEFAULT_GRACE_PERIOD = 10.0  # seconds; Swarm's default stop grace period
HEALTH_POLL_INTERVAL = 0.25  # seconds between `inspect()` calls while gated on health in STARTING
REMOVED_MESSAGE = "removed"

# States in which the step waits for the desired state to move past the current one.
_PAUSE_STATES = frozenset({TaskState.NEW, TaskState.PENDING, TaskState.ASSIGNED, TaskState.ACCEPTED,
                           TaskState.READY})


def grace_period(task: Task) -> float:
    """The stop grace period in seconds: the container spec's `stop_grace_period` (ns) or 10 s."""
    ns = task.spec.container.stop_grace_period
    return DEFAULT_GRACE_PERIOD if ns is None else max(0.0, ns / SECOND)


def has_health_check(task: Task) -> bool:
    hc = task.spec.container.healthcheck
    return hc is not None and len(hc.test) > 0 and hc.test[0] != "NONE"


def is_done(task: Task) -> bool:
    """True when `step` has nothing more to do for this task, whatever happens next except a desired
    state of REMOVE: it is terminal and, when its desired state is REMOVE, already removed."""
    if not task.status.state.terminal:
        return False
    if task.desired_state >= TaskState.REMOVE:
        return task.status.message == REMOVED_MESSAGE
    return True


def is_paused(task: Task) -> bool:
    """True when `step` would leave the task as it is until its desired state changes (it has reached its
    desired state in a pause state, e.g. READY under desired READY), or it is done."""
    if is_done(task):
        return True
    st = task.status.state
    if task.desired_state >= TaskState.SHUTDOWN:
        return False
    if st.terminal:
        return True
    return st in _PAUSE_STATES and st >= task.desired_state


def exit_message(exit_code: int) -> str:
    return f"task: non-zero exit ({exit_code})"


async def step(task: Task, ctlr: Controller, clock: Clock) -> TaskStatus:
    """Perform one operation for `task` on `ctlr` and return the task's next observed status."""
    cur = task.status
    new = await _step(task, ctlr, clock)
    if new.state >= TaskState.STARTING and new.message != REMOVED_MESSAGE:
        new = await _with_runtime_status(new, ctlr)
    if new != cur:
        new = dataclasses.replace(new, timestamp=clock.now())
    return new


async def _step(task: Task, ctlr: Controller, clock: Clock) -> TaskStatus:
    status = task.status
    st = status.state
    desired = task.desired_state

    def transition(state: TaskState, msg: str) -> TaskStatus:
        if state < st:
            raise AssertionError(f"invalid state transition {st.name} -> {state.name}")
        return dataclasses.replace(status, state=state, message=msg, err="")

    def fatal(exc: BaseException) -> TaskStatus:
        msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if isinstance(exc, TemporaryError):
            return dataclasses.replace(status, err=msg)  # retry: same state
        return dataclasses.replace(
            status, state=TaskState.REJECTED if st < TaskState.STARTING else TaskState.FAILED, err=msg)

    # Shutting down bounds everything: the agent never goes past SHUTDOWN on its own.
    if desired >= TaskState.SHUTDOWN:
        if st.terminal:
            if desired >= TaskState.REMOVE and status.message != REMOVED_MESSAGE:
                try:
                    await ctlr.remove()
                except Exception as exc:
                    return fatal_keep_state(status, exc)
                return dataclasses.replace(status, message=REMOVED_MESSAGE)
            return status
        try:
            await ctlr.shutdown(grace_period(task))
        except Exception as exc:
            return fatal(exc)
        return transition(TaskState.SHUTDOWN, "shutdown")

    if st > desired and st in _PAUSE_STATES:
        return status  # beyond the desired state: pause

    # States whose operation is under way proceed past the desired state.
    if st == TaskState.PREPARING:
        try:
            await ctlr.prepare()
        except Exception as exc:
            return fatal(exc)
        return transition(TaskState.READY, "prepared")
    if st == TaskState.STARTING:
        try:
            await ctlr.start()
            if has_health_check(task) or (await ctlr.inspect()).health_check:
                gated = await _wait_healthy(ctlr, clock)
                if not gated:
                    return _exited(status, await ctlr.wait())
        except Exception as exc:
            return fatal(exc)
        return transition(TaskState.RUNNING, "started")
    if st == TaskState.RUNNING:
        try:
            result = await ctlr.wait()
        except Exception as exc:
            return fatal(exc)
        return _exited(status, result)

    if st >= desired or st.terminal:
        return status  # pause states wait for the desired state to move on; terminal states stay
    if st <= TaskState.ASSIGNED:
        return transition(TaskState.ACCEPTED, "accepted")
    if st == TaskState.ACCEPTED:
        return transition(TaskState.PREPARING, "preparing")
    if st == TaskState.READY:
        return transition(TaskState.STARTING, "starting")
    return status


def fatal_keep_state(status: TaskStatus, exc: BaseException) -> TaskStatus:
    """An error while removing a terminal task: stay as is (the agent retries), with the error in `err`."""
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return dataclasses.replace(status, err=msg)


def _exited(status: TaskStatus, result: ExitStatus) -> TaskStatus:
    cs = status.container or ContainerStatus()
    cs = dataclasses.replace(cs, exit_code=result.exit_code, oom_killed=result.oom_killed or None)
    if result.exit_code == 0:
        return dataclasses.replace(status, state=TaskState.COMPLETE, message="finished", err="", container=cs)
    err = result.message or exit_message(result.exit_code)
    return dataclasses.replace(status, state=TaskState.FAILED, err=err, container=cs)


async def _wait_healthy(ctlr: Controller, clock: Clock) -> bool:
    """Poll until the runtime reports healthy (True) or unhealthy / exited (False)."""
    while True:
        rs = await ctlr.inspect()
        if rs.healthy is True:
            return True
        if rs.healthy is False or not rs.running:
            return False
        await clock.sleep(HEALTH_POLL_INTERVAL)


async def _with_runtime_status(status: TaskStatus, ctlr: Controller) -> TaskStatus:
    try:
        rs = await ctlr.inspect()
    except Exception:
        return status
    if not rs.exists:
        return status
    prev = status.container or ContainerStatus()
    exit_code = prev.exit_code
    if rs.exit_code is not None and exit_code == 0:
        exit_code = rs.exit_code
    cs = ContainerStatus(container_id=rs.container_id or prev.container_id, pid=rs.pid, exit_code=exit_code,
                         oom_killed=prev.oom_killed)
    return dataclasses.replace(status, container=cs, healthy=rs.healthy)
