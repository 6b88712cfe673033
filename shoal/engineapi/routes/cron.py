"""Shoal's own `/_shoal/cron` (not an Engine API path): the scheduled services with their next run, and a run
now. Served on the API's own listeners (the unix socket, or TCP with TLS), so who may use them is who may use
the rest of the API; on a follower they go to the leader like every swarm request."""

from __future__ import annotations

from aiohttp import web

from shoal.engineapi.routes.common import json_ok, manager_of, param
from shoal.engineapi.routes.registry import route
from shoal.manager.cron.api import request_run, schedules


@route("GET", "/_shoal/cron")
async def cron_list(request: web.Request) -> web.StreamResponse:
    return json_ok(schedules(manager_of(request).store.view()))


@route("POST", "/_shoal/cron/{id}/run")
async def cron_run(request: web.Request) -> web.StreamResponse:
    """Ask for a run of the service now; 202: the leader's cron loop starts it (under its concurrency policy)."""
    return json_ok(await request_run(manager_of(request), param(request, "id")), status=202)
