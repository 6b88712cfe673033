"""`/secrets` and `/configs`: one set of handlers, registered for each kind (a secret's payload never leaves
the managers; a config's is shown)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shoal.engineapi import convert as C
from shoal.engineapi.routes.common import (
    json_ok,
    manager_of,
    match_labels,
    param,
    parse_filters,
    prefix_any,
    qversion,
    read_json,
)
from shoal.engineapi.routes.registry import route
from shoal.manager.controlapi import ControlAPI


@dataclass(frozen=True)
class _Kind:
    name: str  # "secret" | "config": the store's kind and the path's singular
    filters: frozenset[str]  # dockerd accepts `names` for secrets only
    to_wire: Callable[[Any], dict[str, Any]]
    spec_from_wire: Callable[[Any, bool], Any]  # (body, is an update)
    get: Callable[[ControlAPI, str], Any]
    create: Callable[[ControlAPI, Any], Awaitable[Any]]
    update: Callable[[ControlAPI, str, int, Any], Awaitable[None]]
    remove: Callable[[ControlAPI, str], Awaitable[None]]


_KINDS = (
    _Kind("secret", frozenset({"id", "label", "name", "names"}), C.secret_to_wire,
          lambda body, update: C.secret_spec_from_wire(body, update=update),
          ControlAPI.get_secret, ControlAPI.create_secret, ControlAPI.update_secret, ControlAPI.remove_secret),
    _Kind("config", frozenset({"id", "label", "name"}), C.config_to_wire,
          lambda body, _update: C.config_spec_from_wire(body),
          ControlAPI.get_config, ControlAPI.create_config, ControlAPI.update_config, ControlAPI.remove_config),
)


def _matches(o: Any, flt: dict[str, list[str]]) -> bool:
    if flt.get("id") and not prefix_any(o.id, flt["id"]):
        return False
    if flt.get("name") and not prefix_any(o.name, flt["name"]):
        return False
    if flt.get("names") and o.name not in flt["names"]:
        return False
    return not (flt.get("label") and not match_labels(dict(o.spec.annotations.labels), flt["label"]))


def _register(k: _Kind) -> None:
    base = f"/{k.name}s"

    @route("GET", base)
    async def listing(request: web.Request) -> web.StreamResponse:
        mgr = manager_of(request)
        flt = parse_filters(request, set(k.filters))
        return json_ok([k.to_wire(o) for o in mgr.store.view().all(k.name) if _matches(o, flt)])

    @route("POST", f"{base}/create")
    async def create(request: web.Request) -> web.StreamResponse:
        mgr = manager_of(request)
        o = await k.create(mgr.controlapi, k.spec_from_wire(await read_json(request), False))
        return json_ok({"ID": o.id}, status=201)

    @route("GET", f"{base}/{{id}}")
    async def inspect(request: web.Request) -> web.StreamResponse:
        return json_ok(k.to_wire(k.get(manager_of(request).controlapi, param(request, "id"))))

    @route("POST", f"{base}/{{id}}/update")
    async def update(request: web.Request) -> web.StreamResponse:
        mgr = manager_of(request)
        await k.update(mgr.controlapi, param(request, "id"), qversion(request),
                       k.spec_from_wire(await read_json(request), True))
        return web.Response(status=200)

    @route("DELETE", f"{base}/{{id}}")
    async def remove(request: web.Request) -> web.StreamResponse:
        await k.remove(manager_of(request).controlapi, param(request, "id"))
        return web.Response(status=204)


for _k in _KINDS:
    _register(_k)
