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
from shoal.manager.status import service_status

# --- services -----------------------------------------------------------------------------------


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
