"""Network attachments: a plain container (`docker run --network <attachable overlay>`) on a swarm network.

As in swarmkit (manager/resourceapi), an attachment is a task of its own: no service, the node it is on, one
network in its spec, `runtime = "attachment"`. The allocator gives it its address like any task's (so IPAM
has one authority, and the address is rebuilt from the store by a new leader) and marks it RUNNING once it
holds one; its address stays taken until the node detaches it (the container went) or the node is removed.
Nothing runs it: the dispatcher does not send attachments to agents, the scheduler does not place them, and
the task list leaves them out unless asked for `runtime=attachment` (as dockerd does).

`attach` and `detach` are what the leader runs for a node's request (in process on a manager, over the
Network gRPC service from any other node).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

from shoal.api import messages as M
from shoal.api.attachments import ATTACHMENT_RUNTIME, LABEL_CONTAINER, LABEL_NAME, allocated, is_attachment
from shoal.errors import NotFound, ShoalError
from shoal.model.objects import Annotations, Network, NetworkAttachmentConfig, Task, TaskSpec, TaskStatus
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, ReadTx, Tx, WatchOverflow

ATTACH_TIMEOUT = 20.0  # seconds, dockerd's swarmRequestTimeout


def find_network(v: ReadTx, ref: str) -> Network | None:
    """A network by full ID, name, or unique ID prefix (swarmkit's resourceapi: ID, then a unique name)."""
    try:
        found = v.lookup("network", ref)
    except ShoalError:
        return None
    return found if isinstance(found, Network) else None


def not_attachable(ref: str) -> str:
    """What swarmkit answers for a network created without --attachable (dockerd prefixes it with
    `Could not attach to network <ref>: `)."""
    return M.rpc(M.PERMISSION_DENIED, f"network {ref} not manually attachable")


def node_attachments(v: ReadTx, node_id: str) -> list[Task]:
    return [t for t in v.tasks(node_id=node_id) if is_attachment(t)]


def _find(v: ReadTx, node_id: str, container: str, network_id: str) -> Task | None:
    for t in node_attachments(v, node_id):
        if t.annotations.labels.get(LABEL_CONTAINER) == container and \
                any(c.target == network_id for c in t.spec.networks):
            return t
    return None


async def attach(store: MemoryStore, node_id: str, container: str, ref: str, *, task_id: str,
                 name: str = "", aliases: tuple[str, ...] = (), now: float = 0.0,
                 timeout: float = ATTACH_TIMEOUT) -> Task:
    """The attachment of `container` on this node to network `ref`, allocated (made if missing; idempotent).
    Raises NotFound for an unknown network, PermissionDenied (rpc text) when it is not attachable, and the
    allocator's error when the network has no free address (none of them Unavailable: that one means "ask the
    leader again")."""

    def fn(tx: Tx) -> Task:
        net = find_network(tx, ref)
        if net is None:
            raise NotFound(M.rpc(M.NOT_FOUND, f"network {ref} not found"))
        if not net.spec.attachable or net.spec.ingress:
            raise ShoalError(not_attachable(ref))
        if tx.node(node_id) is None:
            raise NotFound(M.rpc(M.NOT_FOUND, f"node {node_id} not found"))
        existing = _find(tx, node_id, container, net.id)
        if existing is not None:
            return existing
        labels: Mapping[str, str] = {LABEL_CONTAINER: container, **({LABEL_NAME: name} if name else {})}
        t = Task(id=task_id, node_id=node_id, annotations=Annotations(labels=labels),
                 spec=TaskSpec(runtime=ATTACHMENT_RUNTIME,
                               networks=(NetworkAttachmentConfig(target=net.id, aliases=aliases),)),
                 status=TaskStatus(timestamp=tx.now or now, state=TaskState.NEW, message="created"),
                 desired_state=TaskState.RUNNING)
        return tx.create(t)

    sub = store.watch(kinds=("task",))
    try:
        t = await store.update(fn)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    cur = store.view().task(t.id)
                    if cur is None:
                        raise ShoalError(f"network attachment {t.id} was removed while it was being allocated")
                    if allocated(cur):
                        return cur
                    if cur.status.err:  # the network is full: say so now rather than at the deadline
                        raise ShoalError(cur.status.err)
                    try:
                        await sub.get()
                        sub.drain()
                    except WatchOverflow:
                        sub.close()
                        sub = store.watch(kinds=("task",))
        except TimeoutError:
            await detach(store, node_id, t.id)
            raise ShoalError("attaching to network failed, make sure your network options are correct and "
                             "check manager logs: context deadline exceeded") from None
        except ShoalError:
            await detach(store, node_id, t.id)
            raise
        except asyncio.CancelledError:  # the asker went away: nobody will ever use the address
            await asyncio.shield(detach(store, node_id, t.id))
            raise
    finally:
        sub.close()


async def detach(store: MemoryStore, node_id: str, attachment_id: str) -> None:
    """Delete the attachment (its address returns to the pool); a missing one is not an error."""

    def fn(tx: Tx) -> None:
        t = tx.task(attachment_id)
        if t is None or not is_attachment(t):
            return
        if t.node_id != node_id:
            raise ShoalError(M.rpc(M.PERMISSION_DENIED, f"attachment {attachment_id} doesn't belong to this node"))
        tx.delete("task", attachment_id)

    await store.update(fn)


def attached_status(t: Task, now: float) -> Task:
    """What the allocator writes once an attachment holds its address: RUNNING (nothing else runs it)."""
    return replace(t, status=TaskStatus(timestamp=now, state=TaskState.RUNNING, message="attached"))
