"""Cluster objects for network tests: an overlay, a service on it and tasks attached at given addresses, as the
store holds them, and a feed that gives a network agent one fixed snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from shoal.model.objects import (
    Annotations,
    Endpoint,
    EndpointSpec,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachment,
    NetworkAttachmentConfig,
    NetworkSpec,
    Service,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskStatus,
    VirtualIP,
)
from shoal.model.state import TaskState
from shoal.store.memory import Tx


def network(nid: str, subnet: str, *, name: str = "", vni: int = 0) -> Network:
    """Network `nid` (named `name`, else its ID) with one IPAM subnet."""
    return Network(id=nid, spec=NetworkSpec(annotations=Annotations(name=name or nid)),
                   ipam=IPAMOptions(configs=(IPAMConfig(subnet=subnet),)), vni=vni)


def service(sid: str, name: str, *, net: str, vip: str = "", mode: str | None = None,
            aliases: tuple[str, ...] = ()) -> Service:
    """Service `sid` attached to network `net` (with `aliases`), with virtual IP `vip` on it if given; `mode`
    ("vip" or "dnsrr") is set in its endpoint spec, else left to the default."""
    endpoint_spec = EndpointSpec(mode=mode) if mode is not None else None
    spec = ServiceSpec(annotations=Annotations(name=name),
                       task_template=TaskSpec(networks=(NetworkAttachmentConfig(target=net, aliases=aliases),)),
                       endpoint_spec=endpoint_spec)
    vips = (VirtualIP(network_id=net, addr=vip),) if vip else ()
    return Service(id=sid, spec=spec, endpoint=Endpoint(spec=endpoint_spec or EndpointSpec(), virtual_ips=vips))


def task(tid: str, *, net: str, addr: str, svc: Service | None = None, slot: int = 1, node_id: str = "n1",
         state: TaskState = TaskState.RUNNING, healthy: bool | None = None,
         annotations: Annotations | None = None) -> Task:
    """Task `tid` of `svc` (none: a task of no service, named by `annotations`) on `node_id`, attached to
    network `net` at `addr` (CIDR)."""
    if annotations is None:
        annotations = svc.spec.annotations if svc is not None else Annotations()
    return Task(id=tid, service_id=svc.id if svc is not None else "", service_annotations=annotations, slot=slot,
                node_id=node_id, status=TaskStatus(state=state, healthy=healthy),
                networks=(NetworkAttachment(network_id=net, addresses=(addr,)),))


class SnapshotFeed:
    """A network agent's feed of cluster state: one snapshot, then nothing new."""

    def __init__(self, state: Any) -> None:
        self.state = state

    async def states(self) -> AsyncIterator[Any]:
        yield self.state
        await asyncio.Event().wait()


def update_task(tx: Tx, tid: str, *, state: TaskState | None = None, desired: TaskState | None = None) -> None:
    """In a store update: task `tid` (which must exist) observed in `state` and/or told `desired`."""
    t = tx.task(tid)
    assert t is not None, f"no task {tid}"
    if state is not None:
        t = replace(t, status=replace(t.status, state=state))
    if desired is not None:
        t = replace(t, desired_state=desired)
    tx.update(t)
