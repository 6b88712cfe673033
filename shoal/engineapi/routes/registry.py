"""The route table: each handler module registers its endpoints with `route`."""

from __future__ import annotations

import re
from collections.abc import Callable

from shoal.engineapi.server import (
    Handler,
)

# (method, compiled pattern, handler, whether the leader answers it, the path template such as /services/{id})
Route = tuple[str, re.Pattern[str], Handler, bool, str]
_ROUTES: list[Route] = []


def route(method: str, path: str, *, leader: bool = True) -> Callable[[Handler], Handler]:
    """Register a handler. `leader` (the default for swarm endpoints): on a manager that is not the Raft leader the
    request is forwarded to the leader and its answer relayed, as dockerd's control API calls go to the leader;
    `leader=False` for what a node answers itself (ping, info, swarm membership, local engine objects)."""
    pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "/?$")

    def deco(fn: Handler) -> Handler:
        _ROUTES.append((method, pattern, fn, leader, path))
        return fn

    return deco


def route_table() -> list[Route]:
    return list(_ROUTES)
