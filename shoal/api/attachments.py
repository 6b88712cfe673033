"""How a network attachment is told apart from a service task, and which tasks hold addresses.

An attachment (a plain container on an attachable swarm network) is a task of its own with
`runtime = "attachment"` and labels naming its container; the manager allocates and removes them
(shoal.manager.attachments), the node's network agent gives them their DNS names and VIP rules (shoal.net).
"""

from __future__ import annotations

from shoal.model.objects import Task
from shoal.model.state import TaskState

ATTACHMENT_RUNTIME = "attachment"
LABEL_CONTAINER = "com.shoal.attachment.container"  # the engine container (ID, or a name/key before create)
LABEL_NAME = "com.shoal.attachment.name"  # the container's name: resolvable on the network, like its aliases


def is_attachment(t: Task) -> bool:
    return t.spec.runtime == ATTACHMENT_RUNTIME


def allocated(t: Task) -> bool:
    """Every network of the task has its address."""
    return bool(t.networks) and all(a.addresses for a in t.networks)


def task_holds_addresses(t: Task) -> bool:
    """Whether the task's network addresses are still taken: it has not ended, and it is either meant to run
    or already on a node (a task being shut down keeps its address until it has stopped)."""
    return (t.status.state < TaskState.COMPLETE and t.desired_state <= TaskState.COMPLETE) or \
        (t.status.state < TaskState.COMPLETE and bool(t.node_id))
