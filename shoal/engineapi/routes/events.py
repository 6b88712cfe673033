"""`GET /events`: the swarm's events (and, on a docker-executor node, the engine's), filtered as dockerd
filters them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from shoal.engineapi.routes.common import match_labels, node_of, parse_filters, parse_ts
from shoal.engineapi.routes.registry import route
from shoal.engineapi.server import (
    ENGINE_KEY,
    PROXY_KEY,
)
from shoal.errors import InvalidArgument, ShoalError


@route("GET", "/events", leader=False)
async def events(request: web.Request) -> web.StreamResponse:
    node = node_of(request)
    flt = parse_filters(request, {"type", "event", "scope", "container", "image", "label", "network",
                                  "node", "service", "secret", "config", "daemon", "volume", "plugin"})
    # dockerd's events handler returns the timestamp parser's error untyped: 500 (20.10 and current alike).
    since = parse_ts(request.query.get("since"), ShoalError)
    until = parse_ts(request.query.get("until"), ShoalError)
    if since is not None and until is not None and until < since:
        raise InvalidArgument(f"`since` time ({request.query['since']}) cannot be after `until` time "
                              f"({request.query['until']})")
    proxy = request.app[PROXY_KEY]
    engine = request.app[ENGINE_KEY]
    swarm_types = {"service", "node", "secret", "config", "network"}
    wants_swarm = not flt.get("type") or any(t in swarm_types for t in flt["type"])
    if flt.get("scope") and "swarm" not in flt["scope"]:
        wants_swarm = False
    if node.manager is None or not wants_swarm:
        if engine.engine_host is not None:
            return await proxy.handle(request)
    if node.manager is not None and engine.engine_host is not None:
        from shoal.engineapi.events import merged_events  # the engine's container events too, as on Swarm

        return await merged_events(request, node.manager.events.stream(since, until),
                                   lambda msg: event_matches(msg, flt), engine, bounded=until is not None)
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    if node.manager is None:
        if until is not None:
            await resp.write_eof()
            return resp
        await asyncio.Event().wait()
    assert node.manager is not None
    async for msg in node.manager.events.stream(since, until):
        if not event_matches(msg, flt):
            continue
        await resp.write(json.dumps(msg).encode() + b"\n")
    await resp.write_eof()
    return resp


def event_matches(msg: dict[str, Any], flt: dict[str, list[str]]) -> bool:
    """dockerd's event filter (daemon/events): `type`, `scope` and `event` match exactly; each object-kind key
    (service, node, secret, config, network, container, daemon, plugin, volume) matches an event of any type
    whose actor ID or name starts with one of its values (so `service=web` also shows a secret named `web`);
    `image` matches the actor ID or its image exactly, with or without the tag; `label` the attributes."""
    actor = msg.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    aid, name = str(actor.get("ID", "")), str(attrs.get("name", ""))
    if flt.get("type") and msg.get("Type") not in flt["type"]:
        return False
    if flt.get("scope") and msg.get("scope") not in flt["scope"]:
        return False
    events = flt.get("event")
    if events:
        action = str(msg.get("Action", ""))
        if {"health_status", "exec_create", "exec_start"} & set(events):  # dockerd: a prefix, for these
            if not any(action.startswith(e) for e in events):
                return False
        elif action not in events:
            return False
    for kind in ("daemon", "container", "plugin", "volume", "network", "node", "service", "secret", "config"):
        wanted = flt.get(kind)
        if wanted and not any(aid.startswith(w) or name.startswith(w) for w in wanted):
            return False
    images = flt.get("image")
    if images:
        image = str(attrs.get("name" if msg.get("Type") == "image" else "image", ""))
        if not {aid, image, _familiar(aid), _familiar(image)} & set(images):
            return False
    return not flt.get("label") or match_labels(attrs, flt["label"])


def _familiar(ref: str) -> str:
    """An image reference without its tag or digest and without the default registry's prefix."""
    ref = ref.split("@", 1)[0]
    slash = ref.rfind("/")
    if ":" in ref[slash + 1:]:
        ref = ref[:ref.rindex(":")]
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref
