"""What an agent and the dispatcher exchange: a node's assignments and the calls of a session.

An agent on a manager's own node calls the dispatcher in-process; a remote one reaches the same calls over
gRPC with mutual TLS (shoal.rpc). Assignments are streamed as a complete set, then increments: the node's
tasks and the secrets and configs those tasks use, nothing else. Heartbeats carry the node's usage reports
(shoal.api.usage).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from shoal.api.usage import NodeUsage
from shoal.model.objects import Config, NodeDescription, Secret, Task, TaskStatus

COMPLETE = "complete"
INCREMENTAL = "incremental"


@dataclass(frozen=True, slots=True)
class Assignments:
    type: str  # complete | incremental
    tasks: tuple[Task, ...] = ()  # added or changed
    secrets: tuple[Secret, ...] = ()
    configs: tuple[Config, ...] = ()
    removed_tasks: tuple[str, ...] = ()
    removed_secrets: tuple[str, ...] = ()
    removed_configs: tuple[str, ...] = ()


class DispatcherAPI(Protocol):
    async def register(self, node_id: str, description: NodeDescription, addr: str) -> float:
        """Open a session; returns the heartbeat period in seconds."""

    async def heartbeat(self, node_id: str, usage: NodeUsage | None = None) -> float:
        """The session is alive; `usage`, every `shoal.api.usage.REPORT_PERIOD` seconds, what the node's tasks
        use. Returns the heartbeat period in seconds."""

    def assignments(self, node_id: str) -> AsyncIterator[Assignments]: ...

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None: ...
