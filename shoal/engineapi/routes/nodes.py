"""`/nodes`: list, inspect, update, remove."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from shoal.ca import tls_info
from shoal.engineapi import convert as C
from shoal.engineapi.nodeapi import NodeAPI
from shoal.engineapi.routes.common import (
    json_ok,
    manager_of,
    match_labels,
    node_of,
    param,
    parse_filters,
    prefix_any,
    qbool,
    qversion,
    read_json,
)
from shoal.engineapi.routes.registry import route
from shoal.errors import InvalidArgument
from shoal.manager.manager import Manager
from shoal.model.objects import Node

# --- nodes --------------------------------------------------------------------------------------


@route("GET", "/nodes")
async def nodes_list(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    flt = parse_filters(request, {"id", "label", "name", "membership", "role", "node.label"})
    # As swarmkit's enum names, any case; an empty value filters nothing.
    for kind, known in (("role", ("worker", "manager")), ("membership", ("pending", "accepted"))):
        flt[kind] = [r.lower() for r in flt.get(kind, []) if r]
        for r in flt[kind]:
            if r not in known:
                raise InvalidArgument(f"Invalid {kind} filter: '{r}'")
    out = []
    for n in mgr.store.view().nodes():
        if flt.get("id") and not prefix_any(n.id, flt["id"]):
            continue
        name = n.spec.annotations.name or n.description.hostname
        if flt.get("name") and not (prefix_any(name, flt["name"]) or prefix_any(n.description.hostname,
                                                                                  flt["name"])):
            continue
        if flt.get("role") and n.spec.role not in flt["role"]:
            continue
        if flt.get("membership") and "accepted" not in flt["membership"]:  # Shoal admits nodes at once
            continue
        if flt.get("label") and not match_labels(dict(n.description.engine.labels), flt["label"]):
            continue
        if flt.get("node.label") and not match_labels(dict(n.spec.annotations.labels), flt["node.label"]):
            continue
        out.append(_node_wire(n, mgr, node_of(request)))
    return json_ok(out)


def _node_wire(n: Node, mgr: Manager, node: NodeAPI | None = None) -> dict[str, Any]:
    membership = node.membership if node is not None else None
    if membership is not None and n.manager_status is not None:
        # Leader and reachability as the leader sees them now, not as stored.
        n = replace(n, manager_status=membership.status_of(n))
    d = C.node_to_wire(n)
    cluster = mgr.store.view().cluster()
    if cluster is not None and "Description" in d:
        # The root that issued the node's current certificate (differs from the cluster's during a rotation).
        info = n.description.tls_info
        d["Description"]["TLSInfo"] = info if isinstance(info, dict) and info else tls_info(cluster.root_ca)
    return d


@route("GET", "/nodes/{id}")
async def node_inspect(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    return json_ok(_node_wire(mgr.controlapi.get_node(param(request, "id")), mgr, node_of(request)))


@route("POST", "/nodes/{id}/update")
async def node_update(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    spec = C.node_spec_from_wire(await read_json(request))
    await mgr.controlapi.update_node(param(request, "id"), qversion(request), spec)
    return web.Response(status=200)


@route("DELETE", "/nodes/{id}")
async def node_remove(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    await mgr.controlapi.remove_node(param(request, "id"), qbool(request, "force"))
    return web.Response(status=200)
