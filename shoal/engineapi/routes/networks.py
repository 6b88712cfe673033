"""`/networks` in swarm scope (local engine networks go to the engine)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shoal.api import messages as M
from shoal.engineapi import convert as C
from shoal.engineapi.routes.common import (
    json_ok,
    manager_of,
    match_labels,
    node_of,
    param,
    parse_filters,
    prefix_any,
    read_json,
)
from shoal.engineapi.routes.registry import route
from shoal.engineapi.server import (
    ENGINE_KEY,
    PROXY_KEY,
    forward_to_leader,
)
from shoal.errors import NotFound, ShoalError
from shoal.model.objects import Network

# --- networks -----------------------------------------------------------------------------------


def _swarm_networks(request: web.Request) -> list[Network]:
    node = node_of(request)
    if node.manager is None:
        return []
    return list(node.manager.store.view().all("network"))


@route("GET", "/networks", leader=False)
async def networks_list(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE_KEY]
    flt = parse_filters(request, {"dangling", "driver", "id", "label", "name", "scope", "type"})
    local: list[Any] = []
    if engine.engine_host is not None:
        try:
            local = await engine.get_json("/networks", query=dict(request.query))
        except ShoalError:
            local = []
    out = [n for n in local if n.get("Scope") != "swarm"]
    for n in _swarm_networks(request):
        if flt.get("id") and not prefix_any(n.id, flt["id"]):
            continue
        if flt.get("name") and not any(x in n.name for x in flt["name"]):
            continue
        if flt.get("driver") and "overlay" not in flt["driver"]:
            continue
        if flt.get("scope") and "swarm" not in flt["scope"]:
            continue
        if flt.get("type") and "custom" not in flt["type"]:
            continue
        if flt.get("label") and not match_labels(dict(n.spec.annotations.labels), flt["label"]):
            continue
        out.append(C.network_to_wire(n, api_version=request["api_version"], listed=True))
    return json_ok(out)


def _find_swarm_network(request: web.Request, ref: str) -> Network | None:
    node = node_of(request)
    if node.manager is None:
        return None
    v = node.manager.store.view()
    try:
        found = v.lookup("network", ref)
    except ShoalError:
        return None
    return found if isinstance(found, Network) else None


@route("GET", "/networks/{id}", leader=False)
async def network_inspect(request: web.Request) -> web.StreamResponse:
    ref = param(request, "id")
    net = _find_swarm_network(request, ref)
    if net is not None and not net.id.startswith(ref) and request.query.get("scope", "") not in ("", "swarm"):
        # dockerd's getNetwork: a swarm network found by its ID (or a prefix) whatever the scope asked, by
        # its name only when no scope or "swarm" is asked; ?scope=global or local looks no further than the
        # local engine's networks of that scope.
        net = None
    if net is None:
        if request.app[ENGINE_KEY].engine_host is not None:
            return await request.app[PROXY_KEY].handle(request)
        raise NotFound(M.network_not_found(param(request, "id")))
    return json_ok(C.network_to_wire(net, api_version=request["api_version"]))


@route("POST", "/networks/create", leader=False)
async def network_create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    driver = str(body.get("Driver") or "bridge") if isinstance(body, dict) else "bridge"
    scope = str(body.get("Scope") or "") if isinstance(body, dict) else ""
    if driver != "overlay" and scope != "swarm":
        return await request.app[ENGINE_KEY].forward_json(request, body)
    mgr = manager_of(request)
    if not node_of(request).is_leader:
        return await forward_to_leader(request)
    req = C.network_create_from_wire(body)
    net = await mgr.controlapi.create_network(req.spec)
    return json_ok({"Id": net.id, "Warning": ""}, status=201)


@route("DELETE", "/networks/{id}", leader=False)
async def network_remove(request: web.Request) -> web.StreamResponse:
    net = _find_swarm_network(request, param(request, "id"))
    if net is None:
        if request.app[ENGINE_KEY].engine_host is not None:
            return await request.app[PROXY_KEY].handle(request)
        raise NotFound(M.network_not_found(param(request, "id")))
    mgr = manager_of(request)
    if not node_of(request).is_leader:
        return await forward_to_leader(request)
    await mgr.controlapi.remove_network(net.id)
    return web.Response(status=204)
