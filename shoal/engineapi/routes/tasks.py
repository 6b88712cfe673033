"""`/tasks`: list and inspect."""

from __future__ import annotations

from aiohttp import web

from shoal.engineapi import convert as C
from shoal.engineapi.routes.common import json_ok, manager_of, match_labels, param, parse_filters, prefix_any, task_name
from shoal.engineapi.routes.registry import route
from shoal.errors import InvalidArgument
from shoal.model.objects import Network, Task
from shoal.model.state import TaskState
from shoal.store.memory import ReadTx

# --- tasks --------------------------------------------------------------------------------------


def _networks_by_id(v: ReadTx) -> dict[str, Network]:
    return {n.id: n for n in v.all("network")}


@route("GET", "/tasks")
async def tasks_list(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    flt = parse_filters(request, {"id", "name", "label", "service", "node", "desired-state", "_up-to-date",
                                  "runtime"})
    v = mgr.store.view()
    service_ids: set[str] | None = None
    if flt.get("service"):
        service_ids = {mgr.controlapi.get_service(ref, v).id for ref in flt["service"]}
    node_ids: set[str] | None = None
    if flt.get("node"):
        node_ids = set()
        for ref in flt["node"]:
            node_ids.add("" if ref == "" else mgr.controlapi.get_node(ref, v).id)
    desired: set[TaskState] | None = None
    if flt.get("desired-state"):
        desired = set()
        for s in flt["desired-state"]:
            if s.upper() not in TaskState.__members__:
                if s:
                    raise InvalidArgument(f"Invalid desired-state filter: '{s}'")
                continue
            desired.add(TaskState[s.upper()])
        desired = desired or None
    if service_ids is not None:
        candidates = [t for sid in service_ids for t in v.tasks(service_id=sid)]
    else:
        candidates = v.tasks()
    nets = _networks_by_id(v)
    out = []
    for t in candidates:
        if t.desired_state >= TaskState.REMOVE and t.status.state >= TaskState.COMPLETE:
            continue
        if node_ids is not None and t.node_id not in node_ids:
            continue
        if desired is not None and t.desired_state not in desired:
            continue
        if (t.spec.runtime or "container") not in (flt.get("runtime") or ("container",)):
            continue  # dockerd lists container tasks unless asked (network attachments are tasks too)
        if flt.get("id") and not prefix_any(t.id, flt["id"]):
            continue
        if flt.get("name") and not prefix_any(task_name(t, v), flt["name"]):
            continue
        if flt.get("label") and not match_labels(dict(t.service_annotations.labels), flt["label"]):
            continue
        if flt.get("_up-to-date"):
            # The CLI's convergence progress asks for tasks made from the service's current spec.
            svc = v.service(t.service_id)
            if svc is None or t.spec != svc.spec.task_template:
                continue
        out.append(C.task_to_wire(t, networks=nets))
    return json_ok(out)


@route("GET", "/tasks/{id}")
async def task_inspect(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    t = mgr.controlapi.get_task(param(request, "id"))
    assert isinstance(t, Task)
    return json_ok(C.task_to_wire(t, networks=_networks_by_id(mgr.store.view())))
