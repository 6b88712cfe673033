"""The containers of this node's tasks when no Docker Engine runs them (process executor): inspect and logs."""

from __future__ import annotations

from aiohttp import web

from shoal.engineapi.routes.common import json_ok, node_of, param
from shoal.engineapi.routes.logs import format_line, frame, log_options, log_stream
from shoal.engineapi.routes.registry import route
from shoal.engineapi.server import (
    ENGINE_KEY,
    PROXY_KEY,
)
from shoal.errors import NotFound
from shoal.model.objects import Task
from shoal.model.state import TaskState

# --- containers of this node's tasks without a Docker Engine ----------------------------------------
#
# With the process executor there is no engine to proxy `docker logs <task>` to, so the agent answers
# `/containers/{id}/json` (the CLI inspects first, for the ID and whether it has a TTY) and
# `/containers/{id}/logs` for its own tasks. Anything else, or with an engine, goes to the proxy.


def _local_task(request: web.Request) -> Task | None:
    node = node_of(request)
    if request.app[ENGINE_KEY].engine_host is not None or node.agent is None:
        return None
    return node.agent.find_task(param(request, "id"))


@route("GET", "/containers/{id}/json", leader=False)
async def task_container_inspect(request: web.Request) -> web.StreamResponse:
    t = _local_task(request)
    if t is None:
        return await request.app[PROXY_KEY].handle(request)
    from shoal.engineapi.convert._wire import go_time

    c = t.spec.container
    st = t.status
    running = st.state == TaskState.RUNNING
    name = f"{t.service_annotations.name}.{t.slot or t.node_id}.{t.id}"
    return json_ok({
        "Id": t.id, "Name": "/" + name, "Created": go_time(t.meta.created_at),
        "Path": (list(c.command) + list(c.args) or [""])[0], "Args": (list(c.command) + list(c.args))[1:],
        "State": {"Status": "running" if running else ("created" if st.state < TaskState.RUNNING else "exited"),
                  "Running": running, "Paused": False, "Restarting": False, "OOMKilled": False, "Dead": False,
                  "Pid": st.container.pid if st.container else 0,
                  "ExitCode": st.container.exit_code if st.container else 0, "Error": ""},
        "Config": {"Image": c.image, "Tty": c.tty, "Labels": {
            "com.docker.swarm.service.id": t.service_id, "com.docker.swarm.service.name": t.service_annotations.name,
            "com.docker.swarm.task.id": t.id, "com.docker.swarm.task.name": name,
            "com.docker.swarm.node.id": t.node_id}},
    })


@route("GET", "/containers/{id}/logs", leader=False)
async def task_container_logs(request: web.Request) -> web.StreamResponse:
    t = _local_task(request)
    if t is None:
        return await request.app[PROXY_KEY].handle(request)
    agent = node_of(request).agent
    assert agent is not None
    opts, _ = log_options(request, swarm=False)
    tty = t.spec.container.tty
    resp = log_stream(request, tty)
    await resp.prepare(request)
    try:
        async for line in agent.task_logs(t.id, opts):
            await resp.write(frame(line, format_line(line, t, opts, False), tty))
    except NotFound:
        pass
    await resp.write_eof()
    return resp
