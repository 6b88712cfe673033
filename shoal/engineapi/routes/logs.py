"""Service and task logs: dockerd's framing (multiplexed or raw for a TTY), follow, since/until, tail."""

from __future__ import annotations

import asyncio
import struct

from aiohttp import web

from shoal.api.logs import LogLine, LogOptions
from shoal.engineapi.routes.common import manager_of, node_of, param, parse_ts, qbool
from shoal.engineapi.routes.registry import route
from shoal.engineapi.server import (
    API_VERSION,
    _version_tuple,
)
from shoal.errors import InvalidArgument, ShoalError
from shoal.model.objects import Task
from shoal.model.state import TaskState
from shoal.store.memory import Event

# --- logs ---------------------------------------------------------------------------------------


def log_options(request: web.Request, *, swarm: bool = True) -> tuple[LogOptions, bool]:
    """The options of a logs request. `swarm` (service and task logs): as dockerd's cluster backend reads them,
    an unreadable `since` is an untyped error (500) and `until` is not used at all; otherwise (a container's
    logs) both are read and a bad one is a 400."""
    tail_raw = request.query.get("tail", "all")
    tail: int | None = None
    if tail_raw not in ("", "all"):
        try:
            tail = max(0, int(tail_raw))
        except ValueError:
            tail = None
    if swarm:
        try:
            since = parse_ts(request.query.get("since")) or 0.0
        except InvalidArgument as e:
            raise ShoalError(f"could not parse since timestamp: {e.message}") from None
        until = 0.0
    else:
        since = parse_ts(request.query.get("since")) or 0.0
        until = parse_ts(request.query.get("until")) or 0.0
    opts = LogOptions(follow=qbool(request, "follow"), stdout=qbool(request, "stdout"),
                      stderr=qbool(request, "stderr"), tail=tail, since=since, until=until,
                      timestamps=qbool(request, "timestamps"))
    if not opts.stdout and not opts.stderr:
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    return opts, qbool(request, "details")


def frame(line: LogLine, text: bytes, tty: bool) -> bytes:
    if tty:
        return text
    kind = 1 if line.stream == "stdout" else 2
    return struct.pack(">BxxxL", kind, len(text)) + text


def format_line(line: LogLine, t: Task, opts: LogOptions, details: bool) -> bytes:
    from shoal.engineapi.convert._wire import go_time

    out = b""
    if opts.timestamps:
        out += go_time(line.timestamp).encode() + b" "
    if details:
        attrs = {"com.docker.swarm.node.id": t.node_id, "com.docker.swarm.service.id": t.service_id,
                 "com.docker.swarm.task.id": t.id}
        out += ",".join(f"{k}={v}" for k, v in sorted(attrs.items())).encode() + b" "
    data = line.data if line.data.endswith(b"\n") else line.data + b"\n"
    return out + data


class _UntypedStream(web.StreamResponse):
    """A stream sent without Content-Type (aiohttp would add application/octet-stream): dockerd's logs < 1.42."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.pop("Content-Type", None)


def log_stream(request: web.Request, tty: bool) -> web.StreamResponse:
    headers = _log_stream_headers(request, tty)
    return web.StreamResponse(headers=headers) if headers else _UntypedStream()


def _log_stream_headers(request: web.Request, tty: bool) -> dict[str, str]:
    """The Content-Type of a log stream: API 1.42 added it (multiplexed or raw); before, dockerd sends none."""
    if _version_tuple(request.get("api_version", API_VERSION)) < (1, 42):
        return {}
    return {"Content-Type": "application/vnd.docker.raw-stream" if tty else "application/vnd.docker.multiplexed-stream"}


async def _stream_logs(request: web.Request, tasks: list[Task], opts: LogOptions, details: bool, tty: bool,
                       follow_service: str | None) -> web.StreamResponse:
    node = node_of(request)
    mgr = node.require_manager()
    resp = log_stream(request, tty)
    await resp.prepare(request)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1024)
    streaming: set[str] = set()
    workers: list[asyncio.Task[None]] = []

    async def pump(ts: list[Task]) -> None:
        # Every node through the manager's log broker: this node's agent in process, other nodes over their
        # session; a node that cannot answer gives a warning line (formatted like any other) instead of a hang.
        try:
            async for t, line in mgr.logbroker.logs(ts, opts, node.node_id, node.agent):
                await queue.put(frame(line, format_line(line, t, opts, details), tty))
        finally:
            await queue.put(None)

    def start(t: Task) -> None:
        if t.id in streaming:
            return
        streaming.add(t.id)
        workers.append(asyncio.create_task(pump([t])))

    fresh = [t for t in tasks if t.id not in streaming]
    streaming.update(t.id for t in fresh)
    workers.append(asyncio.create_task(pump(fresh)))
    watcher: asyncio.Task[None] | None = None
    service_gone = asyncio.Event()
    if opts.follow and follow_service is not None:
        sub = mgr.store.watch(kinds=("task", "service"))

        async def watch_new() -> None:
            try:
                async for item in sub:
                    if not isinstance(item, Event):
                        continue
                    if item.kind == "service" and item.action == "remove" and item.obj.id == follow_service:
                        service_gone.set()
                        await queue.put(None)
                        return
                    if item.kind == "task" and item.obj.service_id == follow_service and item.action != "remove" \
                            and item.obj.status.state >= TaskState.ASSIGNED and item.obj.node_id:
                        start(item.obj)
            finally:
                sub.close()

        watcher = asyncio.create_task(watch_new())
    finished = 0
    try:
        while True:
            if service_gone.is_set():
                break
            if finished >= len(workers) and (watcher is None):
                break
            item = await queue.get()
            if item is None:
                finished += 1
                continue
            await resp.write(item)
    finally:
        for w in workers:
            w.cancel()
        if watcher is not None:
            watcher.cancel()
    await resp.write_eof()
    return resp


@route("GET", "/services/{id}/logs")
async def service_logs(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    svc = mgr.controlapi.get_service(param(request, "id"))
    opts, details = log_options(request)
    tasks = [t for t in mgr.store.view().tasks(service_id=svc.id) if t.node_id
             and t.status.state >= TaskState.ASSIGNED]
    tasks.sort(key=lambda t: (t.slot, t.meta.created_at))
    return await _stream_logs(request, tasks, opts, details, svc.spec.task_template.container.tty,
                              svc.id if opts.follow else None)


@route("GET", "/tasks/{id}/logs")
async def task_logs(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    t = mgr.controlapi.get_task(param(request, "id"))
    assert isinstance(t, Task)
    opts, details = log_options(request)
    return await _stream_logs(request, [t], opts, details, t.spec.container.tty, None)
