"""The web view's HTTP server: the page and its assets from the package, the cluster's model as JSON, a live
stream of it (Server-Sent Events), service logs, and the operator's actions.

Reads and actions go through `EngineAPI` (the node's Engine API socket); the browser never reaches the Engine
API itself, only the few calls here, each shaped by `shoal.web.views` so that no payload of a secret or config,
and no field the page does not show, leaves the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from shoal.web import views
from shoal.web.auth import CSRF_HEADER, Access
from shoal.web.engine import EngineAPI, EngineError, log_line

log = logging.getLogger(__name__)

REFRESH = 2.0  # seconds between two models sent to a page when no event comes (task states, heartbeat ages)
EVENTS_BACK = 3600.0  # seconds of past events a page is sent when it connects
LOG_TAIL = 200
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html",
          "login.html": "text/html"}
AVAILABILITY = ("active", "pause", "drain")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make a form's Origin "null"
    "Cache-Control": "no-store",
}

ACCESS_KEY: web.AppKey[Access] = web.AppKey("access", Access)
ENGINE_KEY: web.AppKey[EngineAPI] = web.AppKey("engine", EngineAPI)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _asset(name: str) -> bytes:
    return resources.files("shoal.web").joinpath("static", name).read_bytes()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host check, login and CSRF checks before any handler; security headers on every answer."""
    access = request.app[ACCESS_KEY]
    resp: web.StreamResponse
    path = request.path
    if not access.host_ok(request):
        resp = _error(421, "this view answers only to a loopback host name (localhost, 127.0.0.1, [::1])")
    elif path.startswith("/static/") or path == "/login":
        resp = await handler(request)
    elif access.who(request) is None:
        if path.startswith("/api/"):
            resp = _error(401, "log in first: the token is in the daemon's log and in its data dir's web-token")
        else:
            resp = _redirect("/login")
    elif request.method not in ("GET", "HEAD") and (request.headers.get(CSRF_HEADER) != "1"
                                                    or not access.same_origin(request)):
        resp = _error(403, f"a change needs the {CSRF_HEADER} header and this site's Origin")
    else:
        resp = await handler(request)
    if not resp.prepared:
        resp.headers.update(SECURITY_HEADERS)
    return resp


def _redirect(to: str) -> web.Response:
    return web.Response(status=302, headers={"Location": to})


def _static_response(name: str) -> web.Response:
    return web.Response(body=_asset(name), content_type=STATIC[name], charset="utf-8")


async def index(request: web.Request) -> web.StreamResponse:
    return _static_response("index.html")


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC or name.endswith(".html"):
        return _error(404, "not found")
    return _static_response(name)


async def login_page(request: web.Request) -> web.StreamResponse:
    """GET /login: the form; GET /login?token=T (the link the daemon prints) logs in as POST does."""
    token = request.query.get("token")
    if token is not None:
        return _login(request, token)
    return _static_response("login.html")


async def login_post(request: web.Request) -> web.StreamResponse:
    access = request.app[ACCESS_KEY]
    if not access.same_origin(request):
        return _error(403, "a login from another site is refused")
    form = await request.post()
    return _login(request, str(form.get("token", "")))


def _login(request: web.Request, token: str) -> web.StreamResponse:
    access = request.app[ACCESS_KEY]
    if not access.token_ok(token.strip()):
        log.warning("web view: a login with a wrong token from %s", request.remote)
        return web.Response(status=401, body=_asset("login.html").replace(
            b"<!--error-->", b'<p class="error" id="login-error">That token is not this daemon\'s.</p>'),
            content_type="text/html", charset="utf-8")
    resp = _redirect("/")
    access.set_cookie(resp, access.login(f"token login from {request.remote}"))
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[ACCESS_KEY].logout(request)
    resp = _redirect("/login")
    resp.del_cookie(request.app[ACCESS_KEY].cookie, path="/")
    return resp


async def build_model(engine: EngineAPI) -> dict[str, Any]:
    """The page's model, or {"error": ...} where the node cannot answer (not a manager, no swarm, locked, no
    leader); a manager's own Raft member is still shown then (`raft_member`), as that is when it matters."""
    try:
        info = await engine.get("/info")
    except EngineError as e:
        return {"error": e.message}
    swarm = info.get("Swarm") or {}
    me = {"hostname": str(info.get("Name") or ""), "state": str(swarm.get("LocalNodeState") or "inactive")}
    if not swarm.get("ControlAvailable"):
        state = me["state"]
        why = ("this node is not in a swarm" if state == "inactive" else "this node is locked"
               if state == "locked" else "this node is a worker: open the web view of a manager")
        return {"error": why, "self": me}
    raft: dict[str, Any] = {}
    try:
        raft = await engine.get("/_shoal/raft") or {}  # this manager's own view: no leader needed
        nodes, services, tasks, secrets, configs, networks = await asyncio.gather(
            engine.get("/nodes"), engine.get("/services?status=true"), engine.get("/tasks"),
            engine.get("/secrets"), engine.get("/configs"), engine.get("/networks"))
    except EngineError as e:
        return {"error": e.message, "self": me,
                "raft_member": views.raft_member(raft)}
    try:
        heartbeats = await engine.get("/_shoal/heartbeats") or {}
    except EngineError:
        heartbeats = {}  # a leader from before this endpoint, or leadership moving: ages are left out
    return views.snapshot(info=info, nodes=nodes, services=services, tasks=tasks, secrets=secrets,
                          configs=configs, networks=networks, raft=raft, heartbeats=heartbeats)


async def state(request: web.Request) -> web.StreamResponse:
    return web.json_response(await build_model(request.app[ENGINE_KEY]))


class _SSE:
    def __init__(self, resp: web.StreamResponse) -> None:
        self.resp = resp

    async def send(self, event: str, data: Any) -> None:
        payload = json.dumps(data, separators=(",", ":"))
        await self.resp.write(f"event: {event}\ndata: {payload}\n\n".encode())


async def _open_sse(request: web.Request) -> _SSE:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no",
                                       **SECURITY_HEADERS})
    await resp.prepare(request)
    return _SSE(resp)


def _event_view(ev: dict[str, Any]) -> dict[str, Any]:
    actor = ev.get("Actor") or {}
    return {"time": ev.get("timeNano") or int(float(ev.get("time") or 0) * 1e9), "type": ev.get("Type", ""),
            "action": ev.get("Action", ""), "id": actor.get("ID", ""),
            "attributes": {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}}


async def stream(request: web.Request) -> web.StreamResponse:
    """The live view: `state` (the model) at once, again after each batch of swarm events and every REFRESH
    seconds; `event` for each swarm event, the last hour's first."""
    engine = request.app[ENGINE_KEY]
    sse = await _open_sse(request)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)

    async def follow_events() -> None:
        since = time.time() - EVENTS_BACK
        while True:
            try:
                async for ev in engine.events(since):
                    # A new stream starts just after the last event seen, which it must not send again.
                    since = max(since, float(ev.get("timeNano") or 0) / 1e9 + 1e-6)
                    await queue.put(ev)
            except EngineError as e:
                log.debug("web view: the event stream ended: %s", e)
            except Exception as e:  # the socket went away (a restart): follow again
                log.debug("web view: the event stream failed: %r", e)
            await asyncio.sleep(REFRESH)  # a retry's pace, not a synchronisation

    follower = asyncio.create_task(follow_events(), name="web-events")
    try:
        while True:
            await sse.send("state", await build_model(engine))
            with contextlib.suppress(TimeoutError):
                ev = await asyncio.wait_for(queue.get(), REFRESH)
                await sse.send("event", _event_view(ev))
                while not queue.empty():  # a burst (the replay) is sent before one new model
                    await sse.send("event", _event_view(queue.get_nowait()))
    except ConnectionResetError:
        pass  # the page went away
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    return sse.resp


async def service_logs(request: web.Request) -> web.StreamResponse:
    """A service's logs as `docker service logs --timestamps --tail N [--follow]`: `log` events, then `end`."""
    engine = request.app[ENGINE_KEY]
    service = request.match_info["id"]
    follow = request.query.get("follow", "1") not in ("0", "false")
    try:
        tail = max(0, min(int(request.query.get("tail", LOG_TAIL)), 10_000))
    except ValueError:
        return _error(400, "tail must be a number")
    sse = await _open_sse(request)
    try:
        async for name, line in engine.service_logs(service, tail, follow):
            await sse.send("log", {"stream": name, **log_line(line)})
        await sse.send("end", {})
    except EngineError as e:
        with contextlib.suppress(ConnectionResetError):
            await sse.send("failed", {"message": e.message})
    except ConnectionResetError:
        pass  # the page went away
    return sse.resp


# --- actions: each reads the object, changes its spec as the docker CLI does, and updates it ------------------


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise EngineError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise EngineError(400, "the body must be a JSON object")
    return body


async def _update_service(request: web.Request, change: Callable[[dict[str, Any]], str],
                          rollback: bool = False) -> web.StreamResponse:
    engine = request.app[ENGINE_KEY]
    sid = quote(request.match_info["id"], safe="")
    svc = await engine.get(f"/services/{sid}")
    spec = svc["Spec"]
    what = change(spec)
    q = f"version={svc['Version']['Index']}" + ("&rollback=previous" if rollback else "")
    answer = await engine.request("POST", f"/services/{sid}/update?{q}", spec)
    log.info("web view: %s %s service %s (%s)", request.app[ACCESS_KEY].who(request), what, spec.get("Name"),
             svc["ID"])
    return web.json_response({"id": svc["ID"], "done": what, "warnings": (answer or {}).get("Warnings")})


async def scale(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    replicas = body.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise EngineError(400, "replicas must be a whole number, 0 or more")

    def change(spec: dict[str, Any]) -> str:
        mode = spec.get("Mode") or {}
        if "Replicated" in mode:
            mode["Replicated"] = {**(mode["Replicated"] or {}), "Replicas": replicas}
        elif "ReplicatedJob" in mode:
            mode["ReplicatedJob"] = {**(mode["ReplicatedJob"] or {}), "TotalCompletions": replicas}
        else:  # the docker CLI's words for `docker service scale` of a global service
            raise EngineError(400, "scale can only be used with replicated or replicated-job mode")
        return f"scaled to {replicas}"

    return await _update_service(request, change)


async def rollback(request: web.Request) -> web.StreamResponse:
    return await _update_service(request, lambda spec: "rolled back", rollback=True)


async def force_update(request: web.Request) -> web.StreamResponse:
    def change(spec: dict[str, Any]) -> str:
        tt = spec.setdefault("TaskTemplate", {})
        tt["ForceUpdate"] = int(tt.get("ForceUpdate") or 0) + 1
        return "force-updated"

    return await _update_service(request, change)


async def run_now(request: web.Request) -> web.StreamResponse:
    """A run of a service with a schedule, now (Shoal's POST /_shoal/cron/{id}/run, docs/cron.md)."""
    engine = request.app[ENGINE_KEY]
    sid = quote(request.match_info["id"], safe="")
    answer = await engine.request("POST", f"/_shoal/cron/{sid}/run")
    log.info("web view: %s asked for a run of service %s (%s)", request.app[ACCESS_KEY].who(request),
             answer.get("Name"), answer.get("ID"))
    return web.json_response({"id": answer.get("ID"), "done": "run requested"})


async def node_availability(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    availability = body.get("availability")
    if availability not in AVAILABILITY:
        raise EngineError(400, f"availability must be one of {', '.join(AVAILABILITY)}")
    engine = request.app[ENGINE_KEY]
    nid = quote(request.match_info["id"], safe="")
    node = await engine.get(f"/nodes/{nid}")
    spec = node["Spec"]
    spec["Availability"] = availability
    await engine.request("POST", f"/nodes/{nid}/update?version={node['Version']['Index']}", spec)
    log.info("web view: %s set node %s (%s) %s", request.app[ACCESS_KEY].who(request),
             (node.get("Description") or {}).get("Hostname"), node["ID"], availability)
    return web.json_response({"id": node["ID"], "done": f"availability {availability}"})


@web.middleware
async def engine_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EngineError as e:
        return _error(e.status, e.message)


def make_web_app(engine: EngineAPI, access: Access) -> web.Application:
    app = web.Application(middlewares=[guard, engine_errors], client_max_size=64 * 1024)
    app[ACCESS_KEY] = access
    app[ENGINE_KEY] = engine
    r = app.router
    r.add_get("/", index)
    r.add_get("/login", login_page)
    r.add_post("/login", login_post)
    r.add_post("/logout", logout)
    r.add_get("/static/{name}", static)
    r.add_get("/api/state", state)
    r.add_get("/api/stream", stream)
    r.add_get("/api/services/{id}/logs", service_logs)
    r.add_post("/api/services/{id}/scale", scale)
    r.add_post("/api/services/{id}/rollback", rollback)
    r.add_post("/api/services/{id}/force-update", force_update)
    r.add_post("/api/services/{id}/run-now", run_now)
    r.add_post("/api/nodes/{id}/availability", node_availability)
    return app


async def serve_web(api_socket: Path, data_dir: Path, host: str, port: int,
                    tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, EngineAPI]:
    """Start the web view on HOST:PORT (a loopback address, or any with `tls`) and print how to log in. The
    caller cleans the runner up and closes the EngineAPI."""
    from shoal.host.addrs import is_loopback
    from shoal.web.auth import check_listener, new_token

    check_listener(host, tls)
    access = Access(new_token(data_dir), loopback=is_loopback(host), tls=tls is not None, port=port)
    engine = EngineAPI(api_socket)
    runner = web.AppRunner(make_web_app(engine, access), access_log=None, handler_cancellation=True,
                           shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=tls).start()
    shown = f"[{host}]" if ":" in host else host
    url = f"{'https' if tls else 'http'}://{shown}:{port}"
    log.info("web view on %s/ (log in with the token in %s, or open %s/login?token=%s)", url,
             data_dir / "web-token", url, access.token)
    return runner, engine
