"""`/networks` in swarm scope (local engine networks go to the engine)."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import quote

from aiohttp import web

from shoal.agent.exec.container import LABEL_SHOAL_NODE_ID
from shoal.api import messages as M
from shoal.engineapi import convert as C
from shoal.engineapi.routes.common import (
    json_ok,
    manager_of,
    match_labels,
    node_of,
    param,
    parse_filters,
    parse_ts,
    prefix_any,
    read_json,
)
from shoal.engineapi.routes.registry import route
from shoal.engineapi.server import (
    ENGINE_KEY,
    PROXY_KEY,
    forward_to_leader,
)
from shoal.errors import InvalidArgument, NotFound, ShoalError
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


# --- prune ----------------------------------------------------------------------------------------------

SWARM_ONLY_HEADER = "X-Shoal-Prune-Swarm-Only"  # a follower asks the leader for the swarm's part alone
_GO_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _prune_until(flt: dict[str, list[str]], now: float) -> float | None:
    """dockerd's `until` prune filter: a timestamp, or a Go duration before now ("24h")."""
    values = flt.get("until") or []
    if not values:
        return None
    if len(values) > 1:
        raise InvalidArgument("more than one until filter specified")
    raw = values[0]
    if _GO_DURATION.match(raw):
        secs = sum(float(n) * _GO_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", raw))
        return now - secs
    return parse_ts(raw)


def _labels_match(labels: dict[str, str], flt: dict[str, list[str]]) -> bool:
    """Prune's label filters: every `label` matches and no `label!` does (dockerd's matchLabels)."""
    if flt.get("label") and not match_labels(labels, flt["label"]):
        return False
    return not any(match_labels(labels, [x]) for x in flt.get("label!", []))


async def _prune_swarm_here(request: web.Request, flt: dict[str, list[str]], until: float | None) -> list[str]:
    """On the leader: every swarm network that no service or task uses, is not ingress and passes the filters
    goes (one that turns out to be in use is left, as dockerd ignores its "in use" error)."""
    mgr = manager_of(request)
    deleted: list[str] = []
    for n in sorted(mgr.store.view().all("network"), key=lambda n: n.id):
        if n.spec.ingress or (until is not None and n.meta.created_at > until):
            continue
        if not _labels_match(dict(n.spec.annotations.labels), flt):
            continue
        try:
            await mgr.controlapi.remove_network(n.id)
        except ShoalError:
            continue
        deleted.append(n.name)
    return deleted


async def _prune_swarm(request: web.Request, flt: dict[str, list[str]], until: float | None) -> list[str]:
    node = node_of(request)
    if node.manager is None:
        return []
    forwarder = node.forwarder
    if node.is_leader or forwarder is None or request.headers.get(SWARM_ONLY_HEADER):
        return await _prune_swarm_here(request, flt, until)
    await node.wait_for_leader()
    status, data = 0, bytearray()
    async for chunk in forwarder.forward("POST", request.raw_path, {**dict(request.headers), SWARM_ONLY_HEADER: "1"},
                                         b""):
        status = chunk.status or status
        data += chunk.data
    answer = json.loads(bytes(data) or b"{}")
    if status >= 300:
        e = ShoalError(str(answer.get("message", "")))
        e.status = status
        raise e
    return list(answer.get("NetworksDeleted") or [])


@route("POST", "/networks/prune", leader=False)
async def networks_prune(request: web.Request) -> web.StreamResponse:
    """`docker network prune`: the engine's unused networks (never those standing for Shoal's overlays, which
    are Shoal's to remove), then on a manager the swarm's unused networks, as dockerd prunes both."""
    flt = parse_filters(request, {"until", "label", "label!"})
    until = _prune_until(flt, time.time())
    deleted: list[str] = []
    engine = request.app[ENGINE_KEY]
    if engine.engine_host is not None and not request.headers.get(SWARM_ONLY_HEADER):
        local = {k: list(v) for k, v in flt.items()}
        local["label!"] = [*local.get("label!", []), LABEL_SHOAL_NODE_ID]
        prefix = request.raw_path.split("/networks/prune", 1)[0]
        status, data, ctype = await request.app[PROXY_KEY].call(
            request, b"", raw_path=f"{prefix}/networks/prune?filters={quote(json.dumps(local))}")
        if status >= 300:
            return web.Response(status=status, body=data, headers={"Content-Type": ctype})
        deleted += list(json.loads(data or b"{}").get("NetworksDeleted") or [])
    deleted += await _prune_swarm(request, flt, until)
    return json_ok({"NetworksDeleted": deleted or None})
