"""The agent: one per node. Holds a session with a dispatcher, runs assigned tasks, reports status.

For each assigned task a `_TaskRunner` drives the executor's controller through `step` one operation at
a time and reports every new status. A change to the task (its desired state) interrupts a blocking step
(waiting for exit) so a shutdown takes effect at once. Tasks that leave the assignment set have their
runtime object removed; at startup, runtime objects of tasks the dispatcher no longer assigns are removed
and the rest are adopted by their controllers, so a restarted agent neither loses nor duplicates work.

Usage. While a session lasts, the agent measures what its running tasks use (each controller's `usage()`) and
hands the report to the next heartbeat every `usage_period` seconds (the first one at once, for a leader that
has none yet). A task that starts running in between is read once at once, so the next report already has its CPU
rate (a rate needs two readings); an agent whose tasks do not change wakes for usage once a period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from shoal.agent.exec.protocol import Controller, Executor
from shoal.agent.exec.step import step
from shoal.agent.usage import HostMeter, RawUsage, UsageMeter
from shoal.api.dispatch import BEAT_JITTER, COMPLETE, Assignments, DispatcherAPI, SessionTerms
from shoal.api.logs import LogLine, LogOptions
from shoal.api.usage import REPORT_PERIOD, NodeUsage
from shoal.clock import Clock
from shoal.errors import Deferred, NotFound
from shoal.model.objects import Config, Secret, Task, TaskStatus
from shoal.model.state import TaskState
from shoal.tasks import cancel_all, checkpoint, reap

log = logging.getLogger(__name__)


START_POLL_INTERVAL = 0.1  # seconds between runtime checks while a shutdown waits for start() to finish
DESCRIBE_PERIOD = 20.0  # seconds between looks for a changed node description (swarmkit's nodeUpdatePeriod)
USAGE_CONCURRENCY = 8  # tasks measured at once (a container's costs the engine an inspect, maybe a stats call)
# Upper bounds (seconds) of the heartbeat round-trip counts kept for the metrics (a local dispatcher answers in
# microseconds, a remote one in a network round trip plus the leader's turn of its loop).
HEARTBEAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HeartbeatStats:
    """This agent's heartbeats since it started: round trips by latency bucket (cumulative counts, as a
    Prometheus histogram has them), their sum, and the calls that failed (the session ends with one)."""

    def __init__(self) -> None:
        self.buckets = [0] * len(HEARTBEAT_BUCKETS)
        self.count = 0
        self.sum = 0.0
        self.failures = 0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(HEARTBEAT_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1


class _Deps:
    def __init__(self) -> None:
        self.secrets: dict[str, Secret] = {}
        self.configs: dict[str, Config] = {}

    def secret(self, secret_id: str) -> Secret | None:
        return self.secrets.get(secret_id)

    def config(self, config_id: str) -> Config | None:
        return self.configs.get(config_id)


def _settled(t: Task) -> bool:
    """Nothing more to do for this task until its desired state changes."""
    s = t.status.state
    if s >= TaskState.COMPLETE:
        return True
    if t.desired_state == TaskState.READY and s >= TaskState.READY:
        return True
    return False


class _TaskRunner:
    def __init__(self, agent: Agent, task: Task, ctlr: Controller) -> None:
        self.agent = agent
        self.task = task
        self.ctlr = ctlr
        self.changed = asyncio.Event()
        self.runner = asyncio.create_task(self._run())

    def update(self, task: Task) -> None:
        # The manager's copy carries the desired state; our copy carries the latest observed status.
        if task.status.state > self.task.status.state:
            self.task = task
        else:
            self.task = replace(task, status=self.task.status)
        self.changed.set()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if _settled(self.task) and not (self.task.desired_state > TaskState.RUNNING
                                           and self.task.status.state < TaskState.COMPLETE):
                self.changed.clear()
                await self.changed.wait()
                continue
            self.changed.clear()
            # Only a step that blocks for as long as the process runs (waiting for its exit, or for it to
            # become healthy) is interrupted, and only by a change of the desired state. Cancelling any
            # other step (e.g. `start()` while the supervisor is being launched) would leave its work half
            # done and the next step would do it again: duplicate processes. So a STARTING step (start()
            # then, with a health check from the spec or the image, the wait for health) is cancelled
            # only once the runtime reports the task running, i.e. start() has done its work.
            st = self.task.status.state
            blocking = st in (TaskState.RUNNING, TaskState.STARTING)
            desired_at_start = self.task.desired_state
            stepping = asyncio.ensure_future(step(self.task, self.ctlr, self.agent.clock))
            interrupted = False
            while blocking:
                interrupt = asyncio.ensure_future(self.changed.wait())
                try:
                    done, _ = await asyncio.wait([stepping, interrupt], return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    # The runner itself is being cancelled (task removed, agent closing): take the step along.
                    interrupt.cancel()
                    stepping.cancel()
                    raise
                if stepping in done:
                    interrupt.cancel()
                    break
                self.changed.clear()
                if self.task.desired_state != desired_at_start:
                    # Desired state changed while blocked: re-decide.
                    if st == TaskState.STARTING and not await self._started_or_done(stepping):
                        break  # the step finished on its own first
                    stepping.cancel()
                    await reap(stepping)
                    interrupted = True
                    break
            if interrupted:
                self.changed.set()
                continue
            with contextlib.suppress(Exception):
                await stepping
            try:
                status = stepping.result()
            except Exception as e:  # step translates executor errors; anything else is a bug here
                log.exception("step failed for task %s", self.task.id)
                status = replace(self.task.status, err=str(e))
            if status != self.task.status:
                self.task = replace(self.task, status=status)
                self.agent.report(self.task.id, status)
                backoff = 0.05
            elif not _settled(self.task):
                # No progress (temporary error): retry with backoff.
                await self.agent.clock.sleep(backoff + self.agent.rng.random() * backoff)
                backoff = min(backoff * 2, 5.0)

    async def _started_or_done(self, stepping: asyncio.Future[Any]) -> bool:
        """Wait (polling the runtime, bounded by the step itself) until start() has launched the task;
        False if the step ended first."""
        while not stepping.done():
            try:
                if (await self.ctlr.inspect()).running:
                    return True
            except Exception:
                log.debug("inspect of task %s failed", self.task.id, exc_info=True)
            await self.agent.clock.sleep(START_POLL_INTERVAL)
        return False

    async def remove(self) -> None:
        self.runner.cancel()
        await reap(self.runner)
        try:
            if self.task.status.state < TaskState.COMPLETE:
                await self.ctlr.shutdown(10.0)
        except Exception:
            log.debug("shutdown of removed task %s failed", self.task.id, exc_info=True)
        try:
            await self.ctlr.remove()
        except Exception:
            log.warning("removing task %s failed", self.task.id, exc_info=True)
        await self.ctlr.close()


class Agent:
    def __init__(self, node_id: str, executor: Executor, dispatcher: DispatcherAPI, clock: Clock,
                 rng: random.Random, addr: str = "", *, usage_period: float = REPORT_PERIOD,
                 host_meter: HostMeter | None = None) -> None:
        self.node_id = node_id
        self.executor = executor
        self.dispatcher = dispatcher
        self.clock = clock
        self.rng = rng
        self.addr = addr
        self.deps = _Deps()
        self.runners: dict[str, _TaskRunner] = {}
        self._reports: dict[str, TaskStatus] = {}
        self._report_wake = asyncio.Event()
        self.connected = asyncio.Event()
        self.usage_period = usage_period
        self.meter = UsageMeter(clock)
        self.host_meter = host_meter  # the host's own use, beside the tasks' (None: not reported)
        self.usage: NodeUsage | None = None  # the last report made
        self._usage_due: NodeUsage | None = None  # made, not yet carried by a heartbeat
        self.heartbeat_stats = HeartbeatStats()
        self._usage_wake = asyncio.Event()
        self._terms: SessionTerms | None = None  # the last terms of the session running now

    def report(self, task_id: str, status: TaskStatus) -> None:
        self._reports[task_id] = status
        self._report_wake.set()
        if status.state == TaskState.RUNNING:
            self._usage_wake.set()  # a first usage reading of it, for the next report's rate

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._reporter())
            tg.create_task(self._session_loop())

    async def _session_loop(self) -> None:
        """Sessions one after the other, for as long as the agent runs. Only the agent's own cancellation ends
        this loop: a CancelledError that reaches it while nobody cancels the agent (a call failed by a
        cancellation meant for some other task) ends the session like any failure. Raised on, it would end
        this task cancelled, which `run()`'s task group drops without a word: the node would keep its
        containers and never hear from a dispatcher again."""
        backoff = 0.1
        while True:
            self._terms = None
            try:
                await self._session()
            except Deferred as e:
                # The leader holds a slot for this node that many seconds from now: come back then, no sooner (it
                # would be told to wait again) and no later than needed (the slot is let go after a while).
                self.connected.clear()
                log.info("registration deferred by the leader for %.2fs", e.retry_after)
                await self.clock.sleep(e.retry_after)
                continue
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    raise
                self.connected.clear()
                log.warning("agent session ended by a cancellation not meant for the agent; reconnecting",
                            exc_info=True)
            except Exception as e:
                self.connected.clear()
                log.info("agent session ended (%s); reconnecting", e)
            if self._terms is not None:
                # The session was up: its end is news (most often a new leader that every node now registers
                # with), so start over from the first backoff step, at a random point of the spread the
                # dispatcher asked for, which keeps a large cluster from registering all at once.
                backoff = 0.1
                await self.clock.sleep(self.rng.random() * self._terms.rejoin_spread)
            await self.clock.sleep(backoff + self.rng.random() * backoff)
            backoff = min(backoff * 2, 8.0)

    async def _session(self) -> None:
        """One session: the assignment stream, the heartbeats and the watch on the node's description, each
        in a task of its own; the first to end ends the session (its error is the session's), the others are
        cancelled. Not an asyncio.TaskGroup: on Python 3.11 a group whose child fails while the group exits
        (the stream closed as the heartbeat was refused: a leadership change does both) leaves a cancellation
        request on the task that ran it, and this loop's task would then be "being cancelled" for ever."""
        desc = await self.executor.describe()
        checkpoint()
        self._terms = await self.dispatcher.register(self.node_id, desc, self.addr)
        checkpoint()  # a cancellation lost in either call would leave this session waiting for ever
        self.connected.set()
        parts = [asyncio.ensure_future(self._follow()), asyncio.ensure_future(self._heartbeats(self._terms.period)),
                 asyncio.ensure_future(self._description_changes(desc)), asyncio.ensure_future(self._usage_loop())]
        try:
            await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_all(parts)
        for p in parts:
            exc = p.exception() if p.done() and not p.cancelled() else None
            if exc is not None:
                raise exc
        raise NotFound("assignment stream closed")

    async def _follow(self) -> None:
        async for msg in self.dispatcher.assignments(self.node_id):
            await self._apply(msg)

    async def _description_changes(self, desc: Any) -> None:
        """End the session once the node's description changed (an engine network or host route came or
        went, say), as swarmkit's agent does: the next session registers the new one."""
        while True:
            await self.clock.sleep(DESCRIBE_PERIOD)
            try:
                now = await self.executor.describe()
            except Exception as e:  # the engine is away for a moment: the session itself is fine
                log.debug("describing the node: %s", e)
                continue
            if now != desc:
                raise NotFound("the node's description changed; registering it again")

    async def _heartbeats(self, period: float) -> None:
        while True:
            # Once per period, jittered so a fleet of agents does not beat in step: the manager marks a node
            # down after three silent periods, so one late or lost beat is harmless, and beating more often
            # only multiplies the leader's idle work by the number of nodes.
            await self.clock.sleep(period * (1 - BEAT_JITTER * self.rng.random()))
            usage = self._usage_due
            t0 = self.clock.monotonic()
            try:
                self._terms = await self.dispatcher.heartbeat(self.node_id, usage)
                period = self._terms.period
            except Exception:
                self.heartbeat_stats.failures += 1
                raise
            self.heartbeat_stats.observe(self.clock.monotonic() - t0)
            if self._usage_due is usage:
                self._usage_due = None

    async def _usage_loop(self) -> None:
        """Every `usage_period` a report for the next heartbeat (the first one at once); in between, a first
        reading of each task as it starts running."""
        self._usage_due = None
        next_report = self.clock.monotonic()
        while True:
            self._usage_wake.clear()
            now = self.clock.monotonic()
            if now >= next_report:
                readings = await self._read_usage(self._running_tasks())
                self.usage = NodeUsage(taken_at=self.clock.now(), tasks=self.meter.update(readings),
                                       host=self.host_meter.read() if self.host_meter is not None else None)
                self._usage_due = self.usage
                next_report = now + self.usage_period
            else:
                new = [t for t in self._running_tasks() if not self.meter.knows(t.id)]
                if new:
                    self.meter.baseline(await self._read_usage(new))
            woken = asyncio.ensure_future(self._usage_wake.wait())
            timer = asyncio.ensure_future(self.clock.sleep(max(0.0, next_report - self.clock.monotonic())))
            try:
                await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_all([woken, timer])

    def _running_tasks(self) -> list[Task]:
        return [r.task for r in self.runners.values() if r.task.status.state == TaskState.RUNNING]

    async def _read_usage(self, tasks: list[Task]) -> list[tuple[str, str, RawUsage]]:
        gate = asyncio.Semaphore(USAGE_CONCURRENCY)

        async def one(t: Task) -> RawUsage | None:
            async with gate:
                return await self._read_one(t)

        got = await asyncio.gather(*(one(t) for t in tasks))
        return [(t.id, t.service_id, raw) for t, raw in zip(tasks, got, strict=True) if raw is not None]

    async def _read_one(self, t: Task) -> RawUsage | None:
        r = self.runners.get(t.id)
        if r is None:
            return None
        try:
            return await r.ctlr.usage()
        except Exception as e:  # a controller's usage() should not raise; a report without it is fine
            log.debug("measuring task %s: %s", t.id, e)
            return None

    async def _apply(self, msg: Assignments) -> None:
        for s in msg.secrets:
            self.deps.secrets[s.id] = s
        for c in msg.configs:
            self.deps.configs[c.id] = c
        if msg.type == COMPLETE:
            wanted = {t.id for t in msg.tasks}
            for tid in list(self.runners):
                if tid not in wanted:
                    await self.runners.pop(tid).remove()
            for tid in await self.executor.list_task_ids():
                if tid not in wanted and tid not in self.runners:
                    await self._remove_orphan(tid)
        for tid in msg.removed_tasks:
            r = self.runners.pop(tid, None)
            if r is not None:
                await r.remove()
        for t in msg.tasks:
            r = self.runners.get(t.id)
            if r is None:
                self.runners[t.id] = _TaskRunner(self, t, self.executor.controller(t, self.deps))
            else:
                r.update(t)
        for sid in msg.removed_secrets:
            self.deps.secrets.pop(sid, None)
        for cid in msg.removed_configs:
            self.deps.configs.pop(cid, None)

    async def _remove_orphan(self, tid: str) -> None:
        ctlr = self.executor.controller(Task(id=tid, node_id=self.node_id), self.deps)
        try:
            await ctlr.terminate()
        except Exception:
            log.debug("terminating orphan %s failed", tid, exc_info=True)
        try:
            await ctlr.remove()
        finally:
            await ctlr.close()

    async def _reporter(self) -> None:
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            batch = list(self._reports.items())
            self._reports.clear()
            if not batch:
                continue
            try:
                await self.dispatcher.update_task_status(self.node_id, batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Keep the newest status of each task and retry once the session is back.
                for tid, st in batch:
                    self._reports.setdefault(tid, st)
                await self.connected.wait()
                await self.clock.sleep(0.2)
                self._report_wake.set()

    # --- logs -------------------------------------------------------------------------------------

    def find_task(self, ref: str) -> Task | None:
        """A task of this node by ID, unique ID prefix, or container name `<service>.<slot|node>.<task>`
        (what `docker logs` is given on a node without a Docker Engine)."""
        if not ref:
            return None
        tasks = [r.task for r in self.runners.values()]
        for t in tasks:
            if t.id == ref or f"{t.service_annotations.name}.{t.slot or t.node_id}.{t.id}" == ref:
                return t
        matches = [t for t in tasks if t.id.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    async def task_logs(self, task_id: str, options: LogOptions) -> AsyncIterator[LogLine]:
        r = self.runners.get(task_id)
        ctlr = r.ctlr if r is not None else None
        own = False
        if ctlr is None:
            if task_id not in await self.executor.list_task_ids():
                raise NotFound(f"task {task_id} has no logs on this node")
            ctlr = self.executor.controller(Task(id=task_id, node_id=self.node_id), self.deps)
            own = True
        try:
            async for line in ctlr.logs(options):
                yield line
        finally:
            if own:
                await ctlr.close()

    async def close(self) -> None:
        for r in self.runners.values():
            r.runner.cancel()
        for r in self.runners.values():
            await reap(r.runner)
            await r.ctlr.close()
        self.runners.clear()
