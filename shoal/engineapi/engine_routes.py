"""The routes a Docker Engine serves (Engine API 1.56, `shared/engine-api/swagger.yaml`, plus the few dockerd
routes the spec leaves out), as method and path pattern.

A node without a local engine answers an engine route with 501 (the engine it would pass it to is missing)
and anything else with dockerd's 404 "page not found": dockerd's router sends an unknown path and a method a
path does not have to the same not-found handler, so `PUT /version` is a 404 there, not a missing engine.
"""

from __future__ import annotations

import re

_ID = r"[^/]+"
_NAME = r".+"  # image and plugin names may hold slashes (library/busybox)

_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/containers/json"), ("POST", "/containers/create"), ("GET", "/containers/{id}/json"),
    ("GET", "/containers/{id}/top"), ("GET", "/containers/{id}/logs"), ("GET", "/containers/{id}/changes"),
    ("GET", "/containers/{id}/export"), ("GET", "/containers/{id}/stats"), ("POST", "/containers/{id}/resize"),
    ("POST", "/containers/{id}/start"), ("POST", "/containers/{id}/stop"), ("POST", "/containers/{id}/restart"),
    ("POST", "/containers/{id}/kill"), ("POST", "/containers/{id}/update"), ("POST", "/containers/{id}/rename"),
    ("POST", "/containers/{id}/pause"), ("POST", "/containers/{id}/unpause"), ("POST", "/containers/{id}/attach"),
    ("GET", "/containers/{id}/attach/ws"), ("POST", "/containers/{id}/wait"), ("DELETE", "/containers/{id}"),
    ("GET", "/containers/{id}/archive"), ("HEAD", "/containers/{id}/archive"), ("PUT", "/containers/{id}/archive"),
    ("POST", "/containers/prune"), ("POST", "/containers/{id}/exec"),
    ("GET", "/images/json"), ("POST", "/build"), ("POST", "/build/prune"), ("POST", "/build/cancel"),
    ("POST", "/images/create"), ("GET", "/images/search"), ("POST", "/images/prune"), ("GET", "/images/get"),
    ("POST", "/images/load"), ("GET", "/images/{name}/json"), ("GET", "/images/{name}/attestations"),
    ("GET", "/images/{name}/history"), ("POST", "/images/{name}/push"), ("POST", "/images/{name}/tag"),
    ("GET", "/images/{name}/get"), ("DELETE", "/images/{name}"),
    ("POST", "/auth"), ("GET", "/info"), ("GET", "/version"), ("GET", "/_ping"), ("HEAD", "/_ping"),
    ("POST", "/commit"), ("GET", "/events"), ("GET", "/system/df"),
    ("POST", "/exec/{id}/start"), ("POST", "/exec/{id}/resize"), ("GET", "/exec/{id}/json"),
    ("GET", "/volumes"), ("POST", "/volumes/create"), ("POST", "/volumes/prune"), ("GET", "/volumes/{name}"),
    ("PUT", "/volumes/{name}"), ("DELETE", "/volumes/{name}"),
    ("GET", "/networks"), ("POST", "/networks/create"), ("POST", "/networks/prune"), ("GET", "/networks/{id}"),
    ("DELETE", "/networks/{id}"), ("POST", "/networks/{id}/connect"), ("POST", "/networks/{id}/disconnect"),
    ("GET", "/plugins"), ("GET", "/plugins/privileges"), ("POST", "/plugins/pull"), ("POST", "/plugins/create"),
    ("GET", "/plugins/{name}/json"), ("POST", "/plugins/{name}/enable"), ("POST", "/plugins/{name}/disable"),
    ("POST", "/plugins/{name}/upgrade"), ("POST", "/plugins/{name}/push"), ("POST", "/plugins/{name}/set"),
    ("DELETE", "/plugins/{name}"),
    ("GET", "/distribution/{name}/json"), ("POST", "/session"), ("POST", "/grpc"),
)


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{id\}", _ID).replace(r"\{name\}", _NAME)
    return re.compile(f"^{pattern}/?$")


_TABLE: tuple[tuple[str, re.Pattern[str]], ...] = tuple((m, _compile(t)) for m, t in _ROUTES)


def is_engine_route(method: str, path: str) -> bool:
    """Whether a Docker Engine has a route for `method` on `path` (the path without its /vX.Y prefix)."""
    return any(m == method and p.match(path) is not None for m, p in _TABLE)
