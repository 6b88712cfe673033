"""The contract every executor implements (docker, process, and the simulation's fake).

An `Executor` describes its node and hands out one `Controller` per task. The agent drives a controller
only through `shoal.agent.exec.step.step`, one operation at a time, so the docker and process executors
differ only in these methods. Errors: raise `shoal.errors.TemporaryError` to have the step retried later,
`shoal.errors.FatalError` (or any other exception) to fail the task (REJECTED before STARTING, FAILED
after).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from shoal.agent.usage import RawUsage
from shoal.api.logs import LogLine, LogOptions
from shoal.model.objects import Config, NodeDescription, Secret, Task


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitStatus:
    exit_code: int
    message: str = ""  # e.g. "task: non-zero exit (1)"; "" for a clean exit
    oom_killed: bool = False  # the kernel's OOM killer ended it (its memory limit was hit)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeStatus:
    """What an executor observed about a task's runtime object (container or process)."""

    exists: bool
    running: bool = False
    exit_code: int | None = None
    container_id: str = ""
    pid: int = 0
    healthy: bool | None = None  # None: no health check configured, or still starting
    # The runtime runs a health check of its own: a container whose image has a HEALTHCHECK (the task
    # spec has none). Swarmkit gates RUNNING on the container's effective config, so Shoal does too.
    health_check: bool = False


class DependencyGetter(Protocol):
    """How a controller reads the secrets and configs its task refers to (pushed by the dispatcher)."""

    def secret(self, secret_id: str) -> Secret | None: ...

    def config(self, config_id: str) -> Config | None: ...


class Controller(Protocol):
    async def prepare(self) -> None:
        """Create the runtime object (pull/check image, create container, write secrets). Idempotent:
        when the object already exists (the agent restarted), adopt it."""

    async def start(self) -> None:
        """Start it. Idempotent when it is already running."""

    async def wait(self) -> ExitStatus:
        """Return when the task has exited (or raise FatalError("unhealthy ...") when its health check
        failed). Cancellable."""

    async def shutdown(self, grace_period: float) -> None:
        """Stop it with the stop signal, escalating to SIGKILL after the grace period."""

    async def terminate(self) -> None:
        """Kill it at once."""

    async def remove(self) -> None:
        """Remove the runtime object and everything prepared for it (files, secrets)."""

    async def inspect(self) -> RuntimeStatus:
        """What is there now; never raises for a missing object."""

    def logs(self, options: LogOptions) -> AsyncIterator[LogLine]:
        """The task's output, for `service logs` and `docker logs`."""

    async def usage(self) -> RawUsage | None:
        """What the running task uses now (cumulative CPU seconds, resident memory; shoal.agent.usage); None
        when it is not running or cannot be measured. Never raises."""

    async def close(self) -> None:
        """Release client resources held for this task (not the runtime object)."""


class Executor(Protocol):
    async def describe(self) -> NodeDescription:
        """Hostname, platform, resources and engine of this node."""

    def controller(self, task: Task, deps: DependencyGetter) -> Controller: ...

    async def list_task_ids(self) -> set[str]:
        """IDs of tasks that have a runtime object on this node (to shut down tasks no longer assigned
        after a restart, and to adopt the others)."""

    async def close(self) -> None: ...
