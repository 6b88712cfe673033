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

# An agent waits period * (1 - BEAT_JITTER * random()) between heartbeats, so that a fleet does not beat in
# step; the dispatcher counts on the mean of that when it sizes the period to the number of nodes.
BEAT_JITTER = 0.25
MEAN_BEAT = 1 - BEAT_JITTER / 2


@dataclass(frozen=True, slots=True)
class SessionTerms:
    """What the dispatcher tells an agent at each register and heartbeat."""

    period: float  # seconds between heartbeats; the node is down after three silent periods
    # Seconds over which an agent whose session ended spreads its next registration (a random point of them):
    # after an election every node registers with the new leader, and this keeps them from all coming at once.
    rejoin_spread: float = 0.0


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
    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        """Open a session; returns its terms (the heartbeat period)."""

    async def heartbeat(self, node_id: str, usage: NodeUsage | None = None) -> SessionTerms:
        """The session is alive; `usage`, every `shoal.api.usage.REPORT_PERIOD` seconds, what the node's tasks
        use. Returns the session's terms now (the period follows the cluster's setting and size)."""

    def assignments(self, node_id: str) -> AsyncIterator[Assignments]: ...

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None: ...
