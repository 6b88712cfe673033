"""`/services`: list, create, inspect, update (and rollback), remove."""

from __future__ import annotations

from aiohttp import web

from shoal.api import messages as M
from shoal.engineapi import convert as C
from shoal.engineapi.routes.common import (
    json_ok,
    manager_of,
    match_labels,
    param,
    parse_filters,
    prefix_any,
    qbool,
    qbool_strict,
    qversion,
    read_json,
)
from shoal.engineapi.routes.registry import route
from shoal.errors import InvalidArgument
from shoal.model.objects import Service
from shoal.model.state import TaskState
from shoal.store.memory import ReadTx

# --- services -----------------------------------------------------------------------------------


def service_status(v: ReadTx, svc: Service) -> dict[str, int]:
    """ServiceStatus as swarmkit's ListServiceStatuses computes it: for jobs only the current iteration's
    tasks count, DesiredTasks is MaxConcurrent for a replicated job (so a finished job with 5 completions
    and max concurrent 2 lists as `0/2 (5/5 completed)`, as on dockerd), and for global jobs the tasks
    meant to complete that have not yet."""
    live_nodes = {n.id for n in v.nodes() if n.status.state != "down"}
    mode = svc.spec.mode
    running = desired = completed = 0
    iteration = svc.job_status.job_iteration if svc.job_status is not None else 0
    for t in v.tasks(service_id=svc.id):
        if mode.is_job:
            if (t.job_iteration or 0) != iteration:
                continue
            if t.status.state == TaskState.COMPLETE:
                completed += 1
        if t.status.state == TaskState.RUNNING and (mode.is_job or t.node_id in live_nodes):
            running += 1
        if mode.kind == "global" and t.desired_state == TaskState.RUNNING and t.node_id in live_nodes:
            desired += 1
        if mode.kind == "global-job" and t.desired_state == TaskState.COMPLETE \
                and t.status.state != TaskState.COMPLETE:
            desired += 1
    if mode.kind == "replicated":
        desired = mode.replicas
    elif mode.kind == "replicated-job":
        desired = mode.max_concurrent
    return {"RunningTasks": running, "DesiredTasks": desired, "CompletedTasks": completed}


@route("GET", "/services")
async def services_list(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    flt = parse_filters(request, {"id", "label", "mode", "name"})
    status = qbool(request, "status")
    v = mgr.store.view()
    out = []
    for s in v.services():
        if flt.get("id") and not prefix_any(s.id, flt["id"]):
            continue
        if flt.get("name") and not prefix_any(s.name, flt["name"]):
            continue
        if flt.get("label") and not match_labels(dict(s.spec.annotations.labels), flt["label"]):
            continue
        if flt.get("mode") and s.spec.mode.kind not in flt["mode"]:
            continue
        out.append(C.service_to_wire(s, include_status=service_status(v, s) if status else None))
    return json_ok(out)


@route("POST", "/services/create")
async def service_create(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    spec = C.service_spec_from_wire(await read_json(request), api_version=request["api_version"],
                                    name_generator=mgr.controlapi.random_name)
    svc = await mgr.controlapi.create_service(spec)
    return json_ok({"ID": svc.id, "Warnings": None}, status=201)  # null: the 1.56 type has no omitempty


@route("GET", "/services/{id}")
async def service_inspect(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    svc = mgr.controlapi.get_service(param(request, "id"))
    insert = qbool_strict(request, "insertDefaults", "invalid value for insertDefaults: {value}: "
                          'strconv.ParseBool: parsing "{value}": invalid syntax')
    return json_ok(C.service_to_wire(svc, insert_defaults=insert))


@route("POST", "/services/{id}/update")
async def service_update(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    rollback = request.query.get("rollback", "")
    if rollback not in ("", "previous"):
        raise InvalidArgument(M.unrecognized_rollback(rollback))
    raf = request.query.get("registryAuthFrom", "")
    if raf not in ("", "spec", "previous-spec"):
        raise InvalidArgument(M.invalid_registry_auth_from(raf))
    body = await read_json(request)
    version_ = qversion(request)
    if rollback == "previous":
        await mgr.controlapi.update_service(param(request, "id"), version_, None, rollback=True)
    else:
        spec = C.service_spec_from_wire(body, api_version=request["api_version"],
                                        name_generator=mgr.controlapi.random_name)
        await mgr.controlapi.update_service(param(request, "id"), version_, spec)
    return json_ok({"Warnings": None})


@route("DELETE", "/services/{id}")
async def service_remove(request: web.Request) -> web.StreamResponse:
    await manager_of(request).controlapi.remove_service(param(request, "id"))
    return web.Response(status=200)
