"""An in-memory executor with scriptable outcomes, for unit tests and the simulation layer.

A `FakeController` pretends to run a task: `prepare` creates it, `start` runs it, `wait` returns when it
exits (at once, after `run_for` seconds of the injected clock, or when it is stopped), `shutdown` and
`terminate` stop it with `stop_exit_code` / 137. What happens is scripted by a `FakeBehavior`:

    FakeBehavior(exit_code=1)                                # runs, then fails with exit code 1
    FakeBehavior(exit_code=None)                             # runs until shut down
    FakeBehavior(errors={"prepare": [TemporaryError("x")]})  # first prepare() raises, the next succeeds
    FakeBehavior(healthy=[None, None, True])                 # inspect().healthy over successive calls
    FakeBehavior(unhealthy="task: non-zero exit (137): dockerexec: unhealthy container")
    FakeBehavior(exit_code=None, run_for=3.0, unhealthy="...")  # healthy for 3 s, then unhealthy
    FakeBehavior(exit_code=None, cpus=0.5, memory_bytes=64 << 20)  # uses half a core and 64 MiB while it runs

Every call is recorded in `FakeController.calls` (operation names, in order).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from shoal.agent.exec.protocol import DependencyGetter, ExitStatus, RuntimeStatus
from shoal.agent.usage import RawUsage
from shoal.api.logs import LogLine, LogOptions
from shoal.clock import Clock
from shoal.errors import FatalError
from shoal.model.objects import (
    EngineDescription,
    NodeDescription,
    Platform,
    Resources,
    Task,
)


def _no_errors() -> Mapping[str, Sequence[BaseException]]:
    return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeBehavior:
    exit_code: int | None = 0  # None: runs until shut down or terminated
    run_for: float = 0.0  # seconds (of the clock) the task runs before exiting with exit_code
    errors: Mapping[str, Sequence[BaseException]] = field(default_factory=_no_errors)
    healthy: Sequence[bool | None] = ()  # successive inspect().healthy values once started; last sticks
    unhealthy: str | None = None  # wait() raises FatalError(unhealthy) once started (after run_for s)
    stop_exit_code: int = 143  # the exit code after shutdown() (SIGTERM)
    logs: Sequence[LogLine] = ()
    image_health_check: bool = False
    cpus: float = 0.0  # cores the running task uses (usage(): cumulative CPU time on the clock)
    # When set, the cores it uses now (a load that changes over the run, e.g. shared among a service's replicas);
    # `cpus` is then ignored and usage() adds up the rate between two readings.
    cpu_load: Callable[[], float] | None = None
    oom_killed: bool = False  # a non-zero exit_code is the kernel's OOM killer's doing
    memory_bytes: int = 0


class FakeController:
    def __init__(self, task: Task, deps: DependencyGetter | None = None, *,
                 behavior: FakeBehavior | None = None, clock: Clock | None = None) -> None:
        self.task = task
        self.deps = deps
        self.behavior = behavior or FakeBehavior()
        self.clock = clock
        self.calls: list[str] = []
        self.created = False
        self.running = False
        self.removed = False
        self.exit_code: int | None = None
        self.closed = False
        self.last_grace_period: float | None = None
        self._errors: dict[str, list[BaseException]] = {k: list(v) for k, v in self.behavior.errors.items()}
        self._health_calls = 0
        self._last_healthy: bool | None = None
        self._stopped = asyncio.Event()
        self._started_at: float | None = None  # the clock when usage() first saw it running
        self._read_at = 0.0  # the clock at the last usage() (cpu_load)
        self._cpu_seconds = 0.0  # CPU time so far (cpu_load)

    def _enter(self, op: str) -> None:
        self.calls.append(op)
        pending = self._errors.get(op)
        if pending:
            raise pending.pop(0)

    def _exit(self, code: int) -> None:
        if self.running:
            self.running = False
            self.exit_code = code
        self._stopped.set()

    async def prepare(self) -> None:
        self._enter("prepare")
        self.created = True
        self.removed = False

    async def start(self) -> None:
        self._enter("start")
        if not self.created:
            raise FatalError("no such container")
        if self.exit_code is None:
            self.running = True

    async def wait(self) -> ExitStatus:
        self._enter("wait")
        b = self.behavior
        if self.running and b.unhealthy is None and self._last_healthy is False:
            # The health sequence said unhealthy: a real controller's wait() reports it (dockerd's text).
            self._exit(137)
            raise FatalError("task: non-zero exit (137): dockerexec: unhealthy container")
        if self.running and b.unhealthy is not None:
            if b.run_for > 0 and self.clock is not None:
                await self._run_for(b.run_for)  # healthy for run_for seconds, then unhealthy
            if self.running:
                self._exit(b.stop_exit_code)
                raise FatalError(b.unhealthy)
        if self.running:
            if b.exit_code is None:
                await self._stopped.wait()
            elif b.run_for > 0 and self.clock is not None:
                await self._run_for(b.run_for)
            if self.running and b.exit_code is not None:
                self._exit(b.exit_code)
        code = self.exit_code if self.exit_code is not None else 0
        return ExitStatus(exit_code=code, message="" if code == 0 else f"task: non-zero exit ({code})",
                          oom_killed=code != 0 and b.oom_killed)

    async def _run_for(self, seconds: float) -> None:
        """Sleep `seconds` of the clock, or until stopped."""
        assert self.clock is not None
        timer = asyncio.ensure_future(self.clock.sleep(seconds))
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({timer, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            stopped.cancel()

    async def shutdown(self, grace_period: float) -> None:
        self._enter("shutdown")
        self.last_grace_period = grace_period
        self._exit(self.behavior.stop_exit_code)

    async def terminate(self) -> None:
        self._enter("terminate")
        self._exit(137)

    async def remove(self) -> None:
        self._enter("remove")
        self._exit(137)
        self.created = False
        self.removed = True

    async def inspect(self) -> RuntimeStatus:
        self.calls.append("inspect")
        healthy: bool | None = None
        seq = self.behavior.healthy
        if seq and (self.running or self.exit_code is not None):
            healthy = seq[min(self._health_calls, len(seq) - 1)]
            self._health_calls += 1
            self._last_healthy = healthy
        return RuntimeStatus(exists=self.created, running=self.running, exit_code=self.exit_code,
                             container_id=f"fake-{self.task.id}" if self.created else "",
                             pid=4242 if self.running else 0, healthy=healthy,
                             health_check=self.behavior.image_health_check)

    async def logs(self, options: LogOptions) -> AsyncIterator[LogLine]:
        lines = [ln for ln in self.behavior.logs
                 if (ln.stream == "stdout" and options.stdout) or (ln.stream == "stderr" and options.stderr)]
        if options.tail is not None:
            lines = lines[len(lines) - options.tail:] if options.tail > 0 else []
        for ln in lines:
            yield ln

    async def usage(self) -> RawUsage | None:
        if not self.running:
            return None
        now = self.clock.monotonic() if self.clock is not None else 0.0
        if self._started_at is None:
            self._started_at = self._read_at = now
        load = self.behavior.cpu_load
        if load is None:
            return RawUsage(self.behavior.cpus * (now - self._started_at), self.behavior.memory_bytes, "fake")
        self._cpu_seconds += load() * (now - self._read_at)
        self._read_at = now
        return RawUsage(self._cpu_seconds, self.behavior.memory_bytes, "fake")

    async def close(self) -> None:
        self.closed = True


class FakeExecutor:
    """Hands out `FakeController`s; `behavior` is one `FakeBehavior` for every task or a function of the
    task. Controllers are kept per task ID, so a task's controller is the same across calls."""

    def __init__(self, *, hostname: str = "fake-node",
                 behavior: FakeBehavior | Callable[[Task], FakeBehavior] | None = None,
                 clock: Clock | None = None,
                 resources: Resources | None = None) -> None:
        self.hostname = hostname
        self.behavior = behavior
        self.clock = clock
        self.resources = resources or Resources(nano_cpus=4 * 10**9, memory_bytes=8 << 30)
        self.controllers: dict[str, FakeController] = {}

    async def describe(self) -> NodeDescription:
        return NodeDescription(hostname=self.hostname, platform=Platform(architecture="x86_64", os="linux"),
                               resources=self.resources,
                               engine=EngineDescription(engine_version="shoal-fake"))

    def controller(self, task: Task, deps: DependencyGetter) -> FakeController:
        c = self.controllers.get(task.id)
        if c is None:
            b = self.behavior(task) if callable(self.behavior) else self.behavior
            c = FakeController(task, deps, behavior=b, clock=self.clock)
            self.controllers[task.id] = c
        return c

    async def list_task_ids(self) -> set[str]:
        return {tid for tid, c in self.controllers.items() if c.created and not c.removed}

    async def close(self) -> None:
        pass
