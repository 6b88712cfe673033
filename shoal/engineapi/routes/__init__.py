"""The swarm endpoints of the Engine API, one module per resource as dockerd's router is laid out: decode,
call the control API, encode. Filters, status codes and error texts follow dockerd (shoal.api.messages for the
texts); handlers never touch the store except to read. Importing the package registers every route.
"""

from shoal.engineapi.routes import (  # noqa: F401  (they register their routes)
    containers,
    cron,
    events,
    logs,
    networks,
    nodes,
    objects,
    services,
    swarm,
    system,
    tasks,
)
from shoal.engineapi.routes.registry import route, route_table

__all__ = ["route", "route_table"]

# Plain containers on attachable swarm networks register their routes here.
from shoal.engineapi import attach as _attach  # noqa: F401
