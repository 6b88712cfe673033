"""Handlers for the swarm endpoints of the Engine API: decode, call the control API, encode.

Filters, status codes and error texts follow dockerd (see messages.py for the texts). Handlers never
touch the store directly except for reads.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from aiohttp import web

from shoal import ca as CA
from shoal.api import messages as M
from shoal.api.logs import LogLine, LogOptions
from shoal.api.node import InitOptions, JoinOptions
from shoal.ca import make_join_token, tls_info
from shoal.engineapi import convert as C
from shoal.engineapi.convert._wire import parse_go_time
from shoal.engineapi.nodeapi import NodeAPI
from shoal.engineapi.server import (
    API_VERSION,
    ENGINE_KEY,
    NODE_KEY,
    PROXY_KEY,
    Handler,
    _version_tuple,
    error_response,
    forward_to_leader,
    json_response,
    ping_headers,
    version_body,
)
from shoal.errors import InvalidArgument, NotFound, ShoalError, Unavailable
from shoal.manager.manager import Manager
from shoal.model.objects import Cluster, Network, Node, Service, Task
from shoal.model.state import TaskState
from shoal.store.memory import Event, ReadTx

Route = tuple[str, re.Pattern[str], Handler, bool]
_ROUTES: list[Route] = []


def route(method: str, path: str, *, leader: bool = True) -> Callable[[Handler], Handler]:
    """Register a handler. `leader` (the default for swarm endpoints): on a manager that is not the Raft leader the
    request is forwarded to the leader and its answer relayed, as dockerd's control API calls go to the leader;
    `leader=False` for what a node answers itself (ping, info, swarm membership, local engine objects)."""
    pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "/?$")

    def deco(fn: Handler) -> Handler:
        _ROUTES.append((method, pattern, fn, leader))
        return fn

    return deco


def route_table() -> list[Route]:
    return list(_ROUTES)


# --- helpers ------------------------------------------------------------------------------------


def node_of(request: web.Request) -> NodeAPI:
    return request.app[NODE_KEY]


def manager_of(request: web.Request) -> Manager:
    return node_of(request).require_manager()


def param(request: web.Request, name: str) -> str:
    return str(request["params"][name])


def qbool(request: web.Request, name: str, default: bool = False) -> bool:
    v = request.query.get(name)
    if v is None:
        return default
    return v.lower() in ("1", "true", "yes")


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_bool(raw: str) -> bool | None:
    """Go's strconv.ParseBool: the value, or None when it is not one of the spellings Go accepts."""
    return True if raw in _GO_TRUE else False if raw in _GO_FALSE else None


def qbool_strict(request: web.Request, name: str, message: str) -> bool:
    """A boolean query parameter dockerd parses with strconv.ParseBool and refuses (400) when it is not one;
    `message` is dockerd's text for the refusal ({value} is the raw value). Absent or empty: false."""
    raw = request.query.get(name, "")
    if raw == "":
        return False
    v = go_bool(raw)
    if v is None:
        raise InvalidArgument(message.format(value=raw))
    return v


_UINT_RE = re.compile(r"[0-9]+")


def qversion(request: web.Request, kind: str = "service") -> int:
    """`?version=`, parsed as dockerd's strconv.ParseUint(raw, 10, 64): digits only (no sign, no spaces), at most
    2^64-1. `kind` names the object in the refusal, as dockerd's handler does."""
    raw = request.query.get("version", "")
    if _UINT_RE.fullmatch(raw) is None:
        raise InvalidArgument(M.invalid_version(raw, kind))
    n = int(raw)
    if n >= 2**64:
        raise InvalidArgument(M.version_out_of_range(raw, kind))
    return n


async def read_json(request: web.Request) -> Any:
    body = await request.read()
    if not body.strip():
        raise InvalidArgument(M.EMPTY_BODY)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(M.invalid_json("invalid UTF-8 in request body")) from None
    # Go's json.Decoder reads one value and ignores what follows it, as dockerd does.
    value, _ = go_json_decode(text, len(text) - len(text.lstrip()))
    return value


class _NonFinite(Exception):
    """A NaN/Infinity literal: JSON has none and Go's decoder refuses them as a syntax error."""


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def _parse_int(s: str) -> int:
    if len(s) > 100:  # past any Go integer type (and Python's int-from-string digit limit)
        raise _TooLong(s)
    return int(s)


class _TooLong(Exception):
    pass


_GO_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_parse_int)


def go_json_decode(text: str, start: int = 0) -> tuple[Any, int]:
    """One JSON value from `text[start:]` as Go's encoding/json reads it, or InvalidArgument with Go's message:
    Python's extensions (NaN, Infinity, -Infinity) are syntax errors, and nesting deeper than Python's parser
    recurses is refused with Go's "exceeded max depth" (Go's own limit is 10,000 levels; no Engine API type
    nests more than a few dozen, so what is refused here is never a body dockerd would act on)."""
    try:
        return _GO_DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise InvalidArgument(M.invalid_json(go_json_error(e))) from None
    except _NonFinite:
        raise InvalidArgument(M.invalid_json(_non_finite_error(text, start))) from None
    except RecursionError:
        raise InvalidArgument(M.invalid_json("exceeded max depth")) from None
    except _TooLong as e:
        raise InvalidArgument(M.invalid_json(f"json: cannot unmarshal number {e} into Go value of type int64")) \
            from None


def _outside_strings(doc: str, start: int, stop: int) -> Iterator[int]:
    """The positions in doc[start:stop] that are not inside a JSON string (the quotes themselves count as inside)."""
    in_str = esc = False
    for i in range(start, stop):
        c = doc[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        else:
            yield i


def _non_finite_error(doc: str, start: int) -> str:
    """Go's text for the first NaN/Infinity literal: the first capital N or I outside a string (true, false and
    null are lower case), after a minus sign a malformed number."""
    for i in _outside_strings(doc, start, len(doc)):
        c = doc[i]
        if c in "NI":
            if i > 0 and doc[i - 1] == "-":
                return f"invalid character '{c}' in numeric literal"
            return f"invalid character '{c}' looking for beginning of value"
    return "invalid character looking for beginning of value"


def _go_char(c: str) -> str:
    return {"'": "\\'", "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, c)


def _innermost_container(doc: str, pos: int) -> str:
    """'{' or '[' : the innermost object or array open at `pos` (strings skipped)."""
    stack: list[str] = []
    for i in _outside_strings(doc, 0, pos):
        c = doc[i]
        if c in "[{":
            stack.append(c)
        elif c in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def go_json_error(e: json.JSONDecodeError) -> str:
    """The text Go's encoding/json gives for the syntax error Python's decoder reports."""
    doc, pos = e.doc, e.pos
    if pos >= len(doc) or e.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    ch = _go_char(doc[pos])
    if e.msg.startswith("Expecting property name"):
        return f"invalid character '{ch}' looking for beginning of object key string"
    if e.msg.startswith("Expecting value"):
        return f"invalid character '{ch}' looking for beginning of value"
    if e.msg.startswith("Expecting ':'"):
        return f"invalid character '{ch}' after object key"
    if e.msg.startswith("Expecting ','"):
        if _innermost_container(doc, pos) == "[":
            return f"invalid character '{ch}' after array element"
        return f"invalid character '{ch}' after object key:value pair"
    if e.msg.startswith("Invalid control character"):
        return f"invalid character '{ch}' in string literal"
    if e.msg.startswith("Invalid \\escape"):  # Python points at the backslash, Go at the character after it
        return f"invalid character '{_go_char(doc[pos + 1])}' in string escape code"
    return e.msg


_JSON_SPACE = " \t\r\n"


def go_json_unmarshal(text: str) -> Any:
    """`text` as Go's json.Unmarshal reads it: the whole text is one JSON value (what follows it is a syntax
    error too), or InvalidArgument with Go's bare message ("unexpected end of JSON input" where its decoder
    says "unexpected EOF")."""
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    if start == len(text):
        raise InvalidArgument("unexpected end of JSON input")
    try:
        value, end = go_json_decode(text, start)
    except InvalidArgument as e:
        said = e.message.removeprefix(M.invalid_json(""))
        raise InvalidArgument("unexpected end of JSON input" if said == "unexpected EOF" else said) from None
    rest = text[end:].lstrip(_JSON_SPACE)
    if rest:
        raise InvalidArgument(f"invalid character '{_go_char(rest[0])}' after top-level value")
    return value


def _go_kind(v: Any) -> str:
    """The JSON kind Go's UnmarshalTypeError names."""
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "bool"
    return "number"


def _cannot_unmarshal(v: Any, go_type: str) -> str:
    return f"json: cannot unmarshal {_go_kind(v)} into Go value of type {go_type}"


def _filters_as_sets(data: dict[str, Any]) -> str:
    """Go's first error reading `data` as map[string]map[string]bool (the filters' own form), or ""."""
    for v in data.values():
        if v is None:
            continue
        if not isinstance(v, dict):
            return _cannot_unmarshal(v, "map[string]bool")
        for on in v.values():
            if on is not None and not isinstance(on, bool):
                return _cannot_unmarshal(on, "bool")
    return ""


def _filters_as_lists(data: dict[str, Any]) -> bool:
    """Whether `data` reads as map[string][]string (the legacy form of filters)."""
    return all(v is None or (isinstance(v, list) and all(x is None or isinstance(x, str) for x in v))
               for v in data.values())


def parse_filters(request: web.Request, accepted: set[str]) -> dict[str, list[str]]:
    """`?filters=` as dockerd's filters.FromJSON reads it: JSON of map[string]map[string]bool, or the legacy
    map[string][]string; what is neither is refused with Go's json.Unmarshal message (that of the first
    form), as dockerd 20.10 relays it. Then every key must be one of `accepted`."""
    raw = request.query.get("filters")
    if not raw:
        return {}
    data = go_json_unmarshal(raw)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(_cannot_unmarshal(data, "map[string]map[string]bool"))
    error = _filters_as_sets(data)
    if error and not _filters_as_lists(data):
        raise InvalidArgument(error)
    out: dict[str, list[str]] = {}
    for k, v in data.items():
        if k not in accepted:
            raise InvalidArgument(f"invalid filter '{k}'")
        if isinstance(v, dict):
            out[k] = [kk for kk, on in v.items() if on]
        else:
            out[k] = [x or "" for x in v or []]
    return out


def match_labels(labels: dict[str, str] | Any, wanted: list[str]) -> bool:
    for w in wanted:
        if "=" in w:
            k, v = w.split("=", 1)
            if labels.get(k) != v:
                return False
        elif w not in labels:
            return False
    return True


def prefix_any(value: str, prefixes: list[str]) -> bool:
    return any(value.startswith(p) for p in prefixes)


def task_name(t: Task, v: ReadTx) -> str:
    svc_name = t.service_annotations.name
    middle = str(t.slot) if t.slot else t.node_id
    return f"{svc_name}.{middle}.{t.id}"


def json_ok(data: Any, status: int = 200) -> web.Response:
    return json_response(data, status=status)


# --- system -------------------------------------------------------------------------------------


@route("GET", "/_ping", leader=False)
async def ping(request: web.Request) -> web.StreamResponse:
    body = "" if request.method == "HEAD" else "OK"
    return web.Response(text=body, headers=ping_headers(node_of(request)), content_type="text/plain")


@route("GET", "/_shoal/agent", leader=False)
async def agent_state(request: web.Request) -> web.StreamResponse:
    """Shoal's own diagnostic (not an Engine API path): the secret and config IDs this node's agent holds in
    memory and its tasks, so tests and operators can check that secrets reach only the nodes that use them."""
    agent = node_of(request).agent
    if agent is None:
        return json_ok({"secrets": [], "configs": [], "tasks": []})
    return json_ok({"secrets": sorted(agent.deps.secrets), "configs": sorted(agent.deps.configs),
                    "tasks": sorted(agent.runners)})


@route("GET", "/_shoal/raft", leader=False)
async def raft_state(request: web.Request) -> web.StreamResponse:
    """Shoal's own diagnostic (not an Engine API path): this manager's Raft member as it sees itself (term, commit,
    applied index, leader, voters, snapshots) and what its store holds, for tests and operators."""
    node = node_of(request)
    raft = node.raft
    if raft is None or node.store is None:
        return json_ok({})
    st = dict(raft.status())
    st.update({"is_leader": raft.is_leader, "election_timeout": raft.election_timeout,
               "snapshots_taken": raft.snapshots_taken,
               "snapshots_installed": raft.snapshots_installed, "store_version": node.store.version,
               "snapshot_index": raft.core.snapshot_meta.index, "catchup_entries": raft.catchup_entries,
               "leader_loops": node.manager.leading if node.manager is not None else False,
               "store_commits": dict(node.store.stats),
               "objects": {k: node.store.view().count(k) for k in ("node", "service", "task", "secret", "config")}})
    return json_ok(st)


@route("GET", "/version", leader=False)
async def version(request: web.Request) -> web.StreamResponse:
    return json_ok(version_body())


def swarm_info(node: NodeAPI) -> dict[str, Any]:
    if node.locked:
        return {"NodeID": node.node_id, "NodeAddr": node.addr, "LocalNodeState": "locked", "ControlAvailable": False,
                "Error": "", "RemoteManagers": None}
    if node.role == "worker":
        return {"NodeID": node.node_id, "NodeAddr": node.addr, "LocalNodeState": "active",
                "ControlAvailable": False, "Error": "", "RemoteManagers": node.remote_managers()}
    if node.manager is None:
        return {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                "Error": "", "RemoteManagers": None}
    v = node.manager.store.view()
    cluster = v.cluster()
    nodes = v.nodes()
    managers = [n for n in nodes if n.spec.role == "manager"]
    info: dict[str, Any] = {
        "NodeID": node.node_id,
        "NodeAddr": node.addr,
        "LocalNodeState": "active",
        "ControlAvailable": True,
        "Error": "",
        "RemoteManagers": [{"NodeID": n.id, "Addr": n.manager_status.addr if n.manager_status else ""}
                           for n in managers],
        "Nodes": len(nodes),
        "Managers": len(managers),
    }
    if cluster is not None:
        info["Cluster"] = C.swarm_to_wire(cluster, tls_info=CA.desired_tls_info(cluster.root_ca),
                                          root_rotation_in_progress=CA.rotation_in_progress(cluster.root_ca),
                                          include_join_tokens=False)
    return info


@route("GET", "/info", leader=False)
async def info(request: web.Request) -> web.StreamResponse:
    node = node_of(request)
    engine = request.app[ENGINE_KEY]
    base: dict[str, Any] = {}
    if engine.engine_host is not None:
        try:
            base = await engine.get_json("/info")
        except Exception:
            base = {}
    if not base:
        import os
        import platform

        base = {
            "ID": node.node_id or "shoal", "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0,
            "ContainersStopped": 0, "Images": 0, "Driver": "none", "DriverStatus": [],
            "Plugins": {"Volume": [], "Network": ["overlay"], "Authorization": None, "Log": []},
            "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": True, "CpuCfsQuota": True,
            "IPv4Forwarding": True, "Debug": False, "NFd": 0, "NGoroutines": 0,
            "SystemTime": "", "LoggingDriver": "json-file", "CgroupDriver": "none", "CgroupVersion": "2",
            "NEventsListener": 0, "KernelVersion": platform.release(), "OperatingSystem": "Shoal (process executor)",
            "OSVersion": "", "OSType": "linux",
            "Architecture": platform.machine(), "IndexServerAddress": "", "RegistryConfig": None,
            "NCPU": os.cpu_count() or 1, "MemTotal": _mem_total(), "DockerRootDir": str(node.cfg.data_dir),
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "", "Name": node.hostname, "Labels": [],
            "ExperimentalBuild": False, "ServerVersion": version_body()["Version"], "Runtimes": {},
            "DefaultRuntime": "", "LiveRestoreEnabled": False, "Isolation": "", "InitBinary": "",
            "SecurityOptions": [], "Warnings": None,
        }
    base["Swarm"] = swarm_info(node)
    return json_ok(base)


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@route("GET", "/distribution/{name}/json", leader=False)
async def distribution(request: web.Request) -> web.StreamResponse:
    # No registry is reachable from a Shoal node by design of its tests; the CLI warns and carries on
    # with the image reference as given, and executors use the local image.
    name = request.match_info.get("tail", "")
    return error_response(403, f"shoal: no registry access to resolve {name or 'the image'}; "
                               "using the reference as given")


@route("GET", "/events", leader=False)
async def events(request: web.Request) -> web.StreamResponse:
    node = node_of(request)
    flt = parse_filters(request, {"type", "event", "scope", "container", "image", "label", "network",
                                  "node", "service", "secret", "config", "daemon", "volume", "plugin"})
    # dockerd's events handler returns the timestamp parser's error untyped: 500 (20.10 and current alike).
    since = _parse_ts(request.query.get("since"), ShoalError)
    until = _parse_ts(request.query.get("until"), ShoalError)
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
                                   lambda msg: _event_matches(msg, flt), engine, bounded=until is not None)
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    if node.manager is None:
        if until is not None:
            await resp.write_eof()
            return resp
        await asyncio.Event().wait()
    assert node.manager is not None
    async for msg in node.manager.events.stream(since, until):
        if not _event_matches(msg, flt):
            continue
        await resp.write(json.dumps(msg).encode() + b"\n")
    await resp.write_eof()
    return resp


def _parse_ts(raw: str | None, error: type[ShoalError] = InvalidArgument) -> float | None:
    """A `since`/`until` value as Go's timetypes reads it; what it cannot read is refused with `error`."""
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        try:
            return parse_go_time(raw)
        except Exception:
            # Go's timetypes.ParseTimestamps: what is no date is read as seconds[.nanoseconds].
            sec = raw.split(".", 1)[0]
            raise error(f'strconv.ParseInt: parsing "{sec}": invalid syntax') from None


def _event_matches(msg: dict[str, Any], flt: dict[str, list[str]]) -> bool:
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


# --- swarm --------------------------------------------------------------------------------------


def _cluster(request: web.Request) -> Cluster:
    return manager_of(request).controlapi.cluster()


@route("GET", "/swarm")
async def swarm_inspect(request: web.Request) -> web.StreamResponse:
    c = _cluster(request)  # a worker or an inactive node answers 503 as dockerd
    return json_ok(C.swarm_to_wire(c, tls_info=CA.desired_tls_info(c.root_ca),
                                   root_rotation_in_progress=CA.rotation_in_progress(c.root_ca)))


@route("POST", "/swarm/init", leader=False)
async def swarm_init(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    req = C.init_request_from_wire(body)
    node = node_of(request)
    kept = req.force_new_cluster and node.state != "inactive"  # the same swarm, this manager alone in it
    node_id = await node.init_swarm(InitOptions(
        listen_addr=req.listen_addr, advertise_addr=req.advertise_addr, force_new_cluster=req.force_new_cluster,
        spec=req.spec, default_addr_pool=req.default_addr_pool, subnet_size=req.subnet_size,
        data_path_port=req.data_path_port, autolock=req.spec.autolock_managers, availability=req.availability))
    ca = req.spec.ca_config
    if kept or ca.signing_ca_cert or ca.signing_ca_key or ca.force_rotate:
        # dockerd's initClusterSpec: the request's Spec merged onto the cluster's, written with UpdateCluster
        # before the init answers (so a kept swarm takes the new autolock, labels, history limit..., and a
        # signing root starts a rotation to it).
        mgr = manager_of(request)
        cur = mgr.controlapi.cluster()
        base = cur.spec
        if not kept:  # a new cluster's external CAs are the request's already: merged once, as by dockerd
            base = replace(base, ca_config=replace(base.ca_config, external_cas=()))
        try:
            await mgr.controlapi.update_swarm(
                cur.meta.version, C.init_spec_onto(body, base), False, False, False,
                lambda c: make_join_token(c.root_ca, node.rng),
                ca_update=lambda c, sp: CA.apply_ca_spec(c, sp, node.clock.now()))
        except ShoalError as e:
            # dockerd wraps it in a plain error (500); the swarm stays, as it was made or kept
            raise ShoalError(f"error updating cluster settings: {e.message}") from e
    return json_ok(node_id)


@route("POST", "/swarm/join", leader=False)
async def swarm_join(request: web.Request) -> web.StreamResponse:
    req = C.join_request_from_wire(await read_json(request))
    node = node_of(request)
    if node.state != "inactive":
        raise Unavailable(M.SWARM_EXISTS)
    await node.join_swarm(JoinOptions(remote_addrs=tuple(req.remote_addrs), join_token=req.join_token,
                                      listen_addr=req.listen_addr, advertise_addr=req.advertise_addr,
                                      availability=req.availability))
    return web.Response(status=200)


@route("POST", "/swarm/leave", leader=False)
async def swarm_leave(request: web.Request) -> web.StreamResponse:
    await node_of(request).leave(qbool(request, "force"))
    return web.Response(status=200)


@route("POST", "/swarm/update")
async def swarm_update(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    cur = mgr.controlapi.cluster()
    spec = C.swarm_spec_from_wire(await read_json(request), cur.spec)
    node = node_of(request)
    version_ = qversion(request, "swarm")
    worker, manager, unlock = (qbool_strict(request, f, f"invalid value for {f}: {{value}}")
                               for f in ("rotateWorkerToken", "rotateManagerToken", "rotateManagerUnlockKey"))
    await mgr.controlapi.update_swarm(
        version_, spec, worker, manager, unlock, lambda c: make_join_token(c.root_ca, node.rng),
        ca_update=lambda c, sp: CA.apply_ca_spec(c, sp, node.clock.now()))
    return web.Response(status=200)


@route("GET", "/swarm/unlockkey")
async def swarm_unlockkey(request: web.Request) -> web.StreamResponse:
    c = _cluster(request)
    # Without autolock dockerd answers 200 with an empty key (the CLI prints its own "no unlock key is set").
    return json_ok({"UnlockKey": c.unlock_key if c.spec.autolock_managers else ""})


@route("POST", "/swarm/unlock", leader=False)
async def swarm_unlock(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    key = str(body.get("UnlockKey") or "") if isinstance(body, dict) else ""
    await node_of(request).unlock(key)
    return web.Response(status=200)


# --- nodes --------------------------------------------------------------------------------------


@route("GET", "/nodes")
async def nodes_list(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    flt = parse_filters(request, {"id", "label", "name", "membership", "role", "node.label"})
    # As swarmkit's enum names, any case; an empty value filters nothing.
    for kind, known in (("role", ("worker", "manager")), ("membership", ("pending", "accepted"))):
        flt[kind] = [r.lower() for r in flt.get(kind, []) if r]
        for r in flt[kind]:
            if r not in known:
                raise InvalidArgument(f"Invalid {kind} filter: '{r}'")
    out = []
    for n in mgr.store.view().nodes():
        if flt.get("id") and not prefix_any(n.id, flt["id"]):
            continue
        name = n.spec.annotations.name or n.description.hostname
        if flt.get("name") and not (prefix_any(name, flt["name"]) or prefix_any(n.description.hostname,
                                                                                  flt["name"])):
            continue
        if flt.get("role") and n.spec.role not in flt["role"]:
            continue
        if flt.get("membership") and "accepted" not in flt["membership"]:  # Shoal admits nodes at once
            continue
        if flt.get("label") and not match_labels(dict(n.description.engine.labels), flt["label"]):
            continue
        if flt.get("node.label") and not match_labels(dict(n.spec.annotations.labels), flt["node.label"]):
            continue
        out.append(_node_wire(n, mgr, node_of(request)))
    return json_ok(out)


def _node_wire(n: Node, mgr: Manager, node: NodeAPI | None = None) -> dict[str, Any]:
    membership = node.membership if node is not None else None
    if membership is not None and n.manager_status is not None:
        # Leader and reachability as the leader sees them now, not as stored.
        n = replace(n, manager_status=membership.status_of(n))
    d = C.node_to_wire(n)
    cluster = mgr.store.view().cluster()
    if cluster is not None and "Description" in d:
        # The root that issued the node's current certificate (differs from the cluster's during a rotation).
        info = n.description.tls_info
        d["Description"]["TLSInfo"] = info if isinstance(info, dict) and info else tls_info(cluster.root_ca)
    return d


@route("GET", "/nodes/{id}")
async def node_inspect(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    return json_ok(_node_wire(mgr.controlapi.get_node(param(request, "id")), mgr, node_of(request)))


@route("POST", "/nodes/{id}/update")
async def node_update(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    spec = C.node_spec_from_wire(await read_json(request))
    await mgr.controlapi.update_node(param(request, "id"), qversion(request), spec)
    return web.Response(status=200)


@route("DELETE", "/nodes/{id}")
async def node_remove(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    await mgr.controlapi.remove_node(param(request, "id"), qbool(request, "force"))
    return web.Response(status=200)


# --- services -----------------------------------------------------------------------------------


def service_status(v: ReadTx, svc: Service) -> dict[str, int]:
    """ServiceStatus as swarmkit's ListServiceStatuses computes it: for jobs only the current iteration's
    tasks count, DesiredTasks is MaxConcurrent for a replicated job (so a finished job with 5 completions
    and max concurrent 2 lists as `0/2 (5/5 completed)`, as on dockerd), and for global jobs the tasks
    meant to complete that have not yet."""
    live_nodes = {n.id for n in v.nodes() if n.status.state != "down"}
    mode = svc.spec.mode
    running = desired = completed = 0
    iteration = svc.job_status.job_iteration if svc.job_status is not None else 0
    for t in v.tasks(service_id=svc.id):
        if mode.is_job:
            if (t.job_iteration or 0) != iteration:
                continue
            if t.status.state == TaskState.COMPLETE:
                completed += 1
        if t.status.state == TaskState.RUNNING and (mode.is_job or t.node_id in live_nodes):
            running += 1
        if mode.kind == "global" and t.desired_state == TaskState.RUNNING and t.node_id in live_nodes:
            desired += 1
        if mode.kind == "global-job" and t.desired_state == TaskState.COMPLETE \
                and t.status.state != TaskState.COMPLETE:
            desired += 1
    if mode.kind == "replicated":
        desired = mode.replicas
    elif mode.kind == "replicated-job":
        desired = mode.max_concurrent
    return {"RunningTasks": running, "DesiredTasks": desired, "CompletedTasks": completed}


@route("GET", "/services")
async def services_list(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    flt = parse_filters(request, {"id", "label", "mode", "name"})
    status = qbool(request, "status")
    v = mgr.store.view()
    out = []
    for s in v.services():
        if flt.get("id") and not prefix_any(s.id, flt["id"]):
            continue
        if flt.get("name") and not prefix_any(s.name, flt["name"]):
            continue
        if flt.get("label") and not match_labels(dict(s.spec.annotations.labels), flt["label"]):
            continue
        if flt.get("mode") and s.spec.mode.kind not in flt["mode"]:
            continue
        out.append(C.service_to_wire(s, include_status=service_status(v, s) if status else None))
    return json_ok(out)


@route("POST", "/services/create")
async def service_create(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    spec = C.service_spec_from_wire(await read_json(request), api_version=request["api_version"],
                                    name_generator=mgr.controlapi.random_name)
    svc = await mgr.controlapi.create_service(spec)
    return json_ok({"ID": svc.id, "Warnings": None}, status=201)  # null: the 1.56 type has no omitempty


@route("GET", "/services/{id}")
async def service_inspect(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    svc = mgr.controlapi.get_service(param(request, "id"))
    insert = qbool_strict(request, "insertDefaults", "invalid value for insertDefaults: {value}: "
                          'strconv.ParseBool: parsing "{value}": invalid syntax')
    return json_ok(C.service_to_wire(svc, insert_defaults=insert))


@route("POST", "/services/{id}/update")
async def service_update(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    rollback = request.query.get("rollback", "")
    if rollback not in ("", "previous"):
        raise InvalidArgument(M.unrecognized_rollback(rollback))
    raf = request.query.get("registryAuthFrom", "")
    if raf not in ("", "spec", "previous-spec"):
        raise InvalidArgument(M.invalid_registry_auth_from(raf))
    body = await read_json(request)
    version_ = qversion(request)
    if rollback == "previous":
        await mgr.controlapi.update_service(param(request, "id"), version_, None, rollback=True)
    else:
        spec = C.service_spec_from_wire(body, api_version=request["api_version"],
                                        name_generator=mgr.controlapi.random_name)
        await mgr.controlapi.update_service(param(request, "id"), version_, spec)
    return json_ok({"Warnings": None})


@route("DELETE", "/services/{id}")
async def service_remove(request: web.Request) -> web.StreamResponse:
    await manager_of(request).controlapi.remove_service(param(request, "id"))
    return web.Response(status=200)


# --- tasks --------------------------------------------------------------------------------------


def _networks_by_id(v: ReadTx) -> dict[str, Network]:
    return {n.id: n for n in v.all("network")}


@route("GET", "/tasks")
async def tasks_list(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    flt = parse_filters(request, {"id", "name", "label", "service", "node", "desired-state", "_up-to-date",
                                  "runtime"})
    v = mgr.store.view()
    service_ids: set[str] | None = None
    if flt.get("service"):
        service_ids = {mgr.controlapi.get_service(ref, v).id for ref in flt["service"]}
    node_ids: set[str] | None = None
    if flt.get("node"):
        node_ids = set()
        for ref in flt["node"]:
            node_ids.add("" if ref == "" else mgr.controlapi.get_node(ref, v).id)
    desired: set[TaskState] | None = None
    if flt.get("desired-state"):
        desired = set()
        for s in flt["desired-state"]:
            if s.upper() not in TaskState.__members__:
                if s:
                    raise InvalidArgument(f"Invalid desired-state filter: '{s}'")
                continue
            desired.add(TaskState[s.upper()])
        desired = desired or None
    if service_ids is not None:
        candidates = [t for sid in service_ids for t in v.tasks(service_id=sid)]
    else:
        candidates = v.tasks()
    nets = _networks_by_id(v)
    out = []
    for t in candidates:
        if t.desired_state >= TaskState.REMOVE and t.status.state >= TaskState.COMPLETE:
            continue
        if node_ids is not None and t.node_id not in node_ids:
            continue
        if desired is not None and t.desired_state not in desired:
            continue
        if (t.spec.runtime or "container") not in (flt.get("runtime") or ("container",)):
            continue  # dockerd lists container tasks unless asked (network attachments are tasks too)
        if flt.get("id") and not prefix_any(t.id, flt["id"]):
            continue
        if flt.get("name") and not prefix_any(task_name(t, v), flt["name"]):
            continue
        if flt.get("label") and not match_labels(dict(t.service_annotations.labels), flt["label"]):
            continue
        if flt.get("_up-to-date"):
            # The CLI's convergence progress asks for tasks made from the service's current spec.
            svc = v.service(t.service_id)
            if svc is None or t.spec != svc.spec.task_template:
                continue
        out.append(C.task_to_wire(t, networks=nets))
    return json_ok(out)


@route("GET", "/tasks/{id}")
async def task_inspect(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    t = mgr.controlapi.get_task(param(request, "id"))
    assert isinstance(t, Task)
    return json_ok(C.task_to_wire(t, networks=_networks_by_id(mgr.store.view())))


# --- logs ---------------------------------------------------------------------------------------


def _log_options(request: web.Request) -> tuple[LogOptions, bool]:
    tail_raw = request.query.get("tail", "all")
    tail: int | None = None
    if tail_raw not in ("", "all"):
        try:
            tail = max(0, int(tail_raw))
        except ValueError:
            tail = None
    since = _parse_ts(request.query.get("since")) or 0.0
    until = _parse_ts(request.query.get("until")) or 0.0
    opts = LogOptions(follow=qbool(request, "follow"), stdout=qbool(request, "stdout"),
                      stderr=qbool(request, "stderr"), tail=tail, since=since, until=until,
                      timestamps=qbool(request, "timestamps"))
    if not opts.stdout and not opts.stderr:
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    return opts, qbool(request, "details")


def _frame(line: LogLine, text: bytes, tty: bool) -> bytes:
    if tty:
        return text
    kind = 1 if line.stream == "stdout" else 2
    return struct.pack(">BxxxL", kind, len(text)) + text


def _format_line(line: LogLine, t: Task, opts: LogOptions, details: bool) -> bytes:
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


def _log_stream(request: web.Request, tty: bool) -> web.StreamResponse:
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
    resp = _log_stream(request, tty)
    await resp.prepare(request)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1024)
    streaming: set[str] = set()
    workers: list[asyncio.Task[None]] = []

    async def pump(ts: list[Task]) -> None:
        # Every node through the manager's log broker: this node's agent in process, other nodes over their
        # session; a node that cannot answer gives a warning line (formatted like any other) instead of a hang.
        try:
            async for t, line in mgr.logbroker.logs(ts, opts, node.node_id, node.agent):
                await queue.put(_frame(line, _format_line(line, t, opts, details), tty))
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
    opts, details = _log_options(request)
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
    opts, details = _log_options(request)
    return await _stream_logs(request, [t], opts, details, t.spec.container.tty, None)


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
    opts, _ = _log_options(request)
    tty = t.spec.container.tty
    resp = _log_stream(request, tty)
    await resp.prepare(request)
    try:
        async for line in agent.task_logs(t.id, opts):
            await resp.write(_frame(line, _format_line(line, t, opts, False), tty))
    except NotFound:
        pass
    await resp.write_eof()
    return resp


# --- secrets and configs -----------------------------------------------------------------------


def _kv_filters(request: web.Request, names: bool = True) -> dict[str, list[str]]:
    """The filters of a secret (or, without `names`, which dockerd accepts for secrets only, a config) list."""
    return parse_filters(request, {"id", "label", "name", "names"} if names else {"id", "label", "name"})


def _match_obj(o: Any, flt: dict[str, list[str]]) -> bool:
    if flt.get("id") and not prefix_any(o.id, flt["id"]):
        return False
    if flt.get("name") and not prefix_any(o.name, flt["name"]):
        return False
    if flt.get("names") and o.name not in flt["names"]:
        return False
    return not (flt.get("label") and not match_labels(dict(o.spec.annotations.labels), flt["label"]))


@route("GET", "/secrets")
async def secrets_list(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    flt = _kv_filters(request)
    return json_ok([C.secret_to_wire(s) for s in mgr.store.view().all("secret") if _match_obj(s, flt)])


@route("POST", "/secrets/create")
async def secret_create(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    s = await mgr.controlapi.create_secret(C.secret_spec_from_wire(await read_json(request)))
    return json_ok({"ID": s.id}, status=201)


@route("GET", "/secrets/{id}")
async def secret_inspect(request: web.Request) -> web.StreamResponse:
    return json_ok(C.secret_to_wire(manager_of(request).controlapi.get_secret(param(request, "id"))))


@route("POST", "/secrets/{id}/update")
async def secret_update(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    await mgr.controlapi.update_secret(param(request, "id"), qversion(request),
                                       C.secret_spec_from_wire(await read_json(request), update=True))
    return web.Response(status=200)


@route("DELETE", "/secrets/{id}")
async def secret_remove(request: web.Request) -> web.StreamResponse:
    await manager_of(request).controlapi.remove_secret(param(request, "id"))
    return web.Response(status=204)


@route("GET", "/configs")
async def configs_list(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    flt = _kv_filters(request, names=False)
    return json_ok([C.config_to_wire(c) for c in mgr.store.view().all("config") if _match_obj(c, flt)])


@route("POST", "/configs/create")
async def config_create(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    c = await mgr.controlapi.create_config(C.config_spec_from_wire(await read_json(request)))
    return json_ok({"ID": c.id}, status=201)


@route("GET", "/configs/{id}")
async def config_inspect(request: web.Request) -> web.StreamResponse:
    return json_ok(C.config_to_wire(manager_of(request).controlapi.get_config(param(request, "id"))))


@route("POST", "/configs/{id}/update")
async def config_update(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    await mgr.controlapi.update_config(param(request, "id"), qversion(request),
                                       C.config_spec_from_wire(await read_json(request)))
    return web.Response(status=200)


@route("DELETE", "/configs/{id}")
async def config_remove(request: web.Request) -> web.StreamResponse:
    await manager_of(request).controlapi.remove_config(param(request, "id"))
    return web.Response(status=204)


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



# Plain containers on attachable swarm networks register their routes here.
from shoal.engineapi import attach as _attach  # noqa: E402,F401
