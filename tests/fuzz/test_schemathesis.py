"""Schemathesis against a real Shoal manager: every swarm operation of the Engine API's swagger.yaml, seeded.

One `shoal daemon` (process executor) is started for the module and `docker swarm init` runs on it. Each
operation of the swarm paths in `../shared/engine-api/swagger.yaml` (the contract, see its README) is then
sent schemathesis' coverage cases (boundary and missing values, wrong types) and `MAX_EXAMPLES` generated
requests (positive and negative data, fixed Hypothesis seed, no shrinking, no example database, so a run is
repeatable; about two minutes on two busy cores). A test fails on:

- a 5xx that dockerd itself would not answer: only `ALLOWED_5XX` passes, each with the reason it is dockerd's
  behaviour (never a Shoal bug);
- no answer within `REQUEST_TIMEOUT`, a dropped connection, or the daemon process gone (a crash).

`test_undeclared_methods` sends each swarm path the methods the spec does not give it (schemathesis'
unsupported-method case): a 4xx with a JSON message, as dockerd's router answers, never a 5xx.

Then `test_daemon_survived_and_restarts` checks that the daemon still runs, stops it with SIGTERM and starts it
again on the same data dir: it answers, the swarm is active, every service, secret, config, network and node
that existed before the restart is there afterwards with the same version (this replays the Raft log, so an
entry that was accepted but cannot be decoded fails here). If the fuzzer turned autolock on, the swarm is
unlocked with its key first, as an operator would.

Bounded on purpose. The node is drained right after init and fuzzed node updates of the real node keep it
drained, so no fuzzed command is ever run as a host process. Addresses a generated request could make the
node contact (join remotes, external CA URLs) are rewritten to a closed loopback port, published ports are
left to dynamic allocation, and `follow=true` streams (events, logs) are read for at most a moment. Not sent:
`POST /swarm/leave` (by design it ends the swarm the rest of the run needs) and the plugin operations that
pull from a registry or change engine plugins (a swarm only lists plugins).

Half of the requests to `/{kind}/{id}...` use the id of a real object (and half of those updates its current
version), so bodies reach the store and the Raft log, not only the not-found path. Every failure is also appended, as
one JSON line, to the file named by `SHOAL_FUZZ_REPORT` when set.

The spec is found at `$SHOAL_ENGINE_API_SPEC`, else `../shared/engine-api/swagger.yaml` beside the clone, else the
copy in tests/fixtures/engine-api/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.managers import free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
_SHARED = ROOT.parent / "shared" / "engine-api" / "swagger.yaml"
_VENDORED = ROOT / "tests" / "fixtures" / "engine-api" / "swagger.yaml"
SPEC = Path(os.environ.get("SHOAL_ENGINE_API_SPEC", _SHARED if _SHARED.exists() else _VENDORED))
if not SPEC.is_file():
    pytest.skip(f"Engine API spec not found at {SPEC} (set SHOAL_ENGINE_API_SPEC)", allow_module_level=True)

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("schemathesis"), pytest.mark.timeout(600)]

SEED = 20261207
MAX_EXAMPLES = int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "25"))
REQUEST_TIMEOUT = 30.0
STREAM_READ = 1.0  # seconds a stream (events, logs) is read before the client closes it
STREAM_IDLE = 3.0  # the longest wait for the headers or a chunk of a stream
API_VERSION = "1.47"  # Shoal's; the swagger's basePath (/v1.56) would only be refused as too new
LOOPBACK_CLOSED = "127.0.0.1:9"  # discard port, nothing listens: a request the node sends there fails at once

SWARM_PATHS = (r"^/(swarm|nodes|services|tasks|secrets|configs|networks)(/|$)|^/(events|info|_ping|version)$"
               r"|^/plugins$")
NOT_SENT = r"^/swarm/leave$"

UPDATE_PATHS = re.compile(r"^/(swarm|nodes/[^/]+|services/[^/]+|secrets/[^/]+|configs/[^/]+)/update$")
STREAMING = re.compile(r"^/(events|services/[^/]+/logs|tasks/[^/]+/logs)$")


@dataclass(frozen=True)
class Allowed:
    method: str  # regex on the HTTP method
    path: str  # regex on the swagger path template
    status: int
    message: str  # regex on the JSON body's "message"
    reason: str
    uint_version: bool = False  # only when the query's `version` is one Go's strconv.ParseUint(v, 10, 64) takes


def _go_uint64(raw: Any) -> bool:
    """Would dockerd's strconv.ParseUint(raw, 10, 64) accept this `version`? (Else it answers 400.)"""
    text = str(raw)
    return text.isascii() and text.isdigit() and int(text) < 2**64


# The 5xx answers dockerd itself gives; anything else with status >= 500 is a Shoal bug.
ALLOWED_5XX = (
    Allowed("POST", r"^/(swarm|nodes/\{id\}|services/\{id\}|secrets/\{id\}|configs/\{id\})/update$", 500,
            r"^rpc error: code = Unknown desc = update out of sequence$",
            "dockerd maps swarmkit's ErrSequenceConflict (an update built on an old version) to a 500; the CLI "
            "retries on it. Only for a version dockerd parses: -1 or 2^64 get its 400 (strconv.ParseUint)",
            uint_version=True),
    Allowed("POST", r"^/swarm/(init|join)$", 503, r"^This node is already part of a swarm\.",
            "dockerd's errSwarmExists (daemon/cluster/errors.go) is an Unavailable error: 503"),
    Allowed("POST", r".*", 501, r"^rpc error: code = Unimplemented desc = ",
            "swarmkit refuses some changes as Unimplemented (renaming a service, changing its mode, moving "
            "networks); dockerd passes gRPC Unimplemented on as 501"),
    Allowed("POST", r"^/secrets/create$", 500, r'^rpc error: code = Unknown desc = plugin ".*" not found$',
            "a secret with a Driver names a secret-driver plugin; swarmkit's lookup of one not installed fails "
            "with an unknown gRPC error, which dockerd answers 500 (seen on dockerd 20.10 by tests/differential; "
            "Shoal runs no secret-driver plugins, so every driver is one not installed)"),
    Allowed("GET", r"^/events$", 500, r'^strconv\.ParseInt: parsing ".*": invalid syntax$',
            "an unreadable since/until on /events is the untyped error of dockerd's timetypes parser, which "
            "dockerd 20.10 answers 500 (seen by tests/differential)"),
    Allowed("GET", r"^/(services|tasks)/\{id\}/logs$", 500, r"^could not parse since timestamp: ",
            "an unreadable since on service or task logs is an untyped error of dockerd's cluster backend: 500 "
            "on dockerd 20.10 (seen by tests/differential)"),
    Allowed(r"^(GET|POST)$", r"^/(networks/(\{id\}/(connect|disconnect)|create)|plugins)$", 501,
            r"^this node has no local container engine \(shoal runs with the process executor\)",
            "the operations dockerd serves from its engine (creating a local-scope network such as a bridge, "
            "connecting a container, listing plugins) on a node that has none: 501, as "
            "dockerd answers a feature it does not have (the Go client maps 501 to errdefs.NotImplemented); a "
            "node with the docker executor relays them"),
)


def allowed(method: str, path: str, status: int, body: Any, query: Any) -> Allowed | None:
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str):
        return None  # a 5xx without dockerd's {"message": ...} shape is never dockerd's
    version = query.get("version", "") if isinstance(query, dict) else ""
    for a in ALLOWED_5XX:
        if (a.status == status and re.search(a.method, method) and re.search(a.path, path)
                and re.search(a.message, message) and (not a.uint_version or _go_uint64(version))):
            return a
    return None


def _load_schema() -> Any:
    config = schemathesis.Config.from_dict({
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "no-shrink": True, "deterministic": True,
                       "database": "none"},
        "phases": {"coverage": {"enabled": True}, "stateful": {"enabled": False}},
    })
    schema = schemathesis.openapi.from_path(SPEC, config=config)
    return schema.include(path_regex=SWARM_PATHS).exclude(path_regex=NOT_SENT)


schema = _load_schema()


# --- the node -----------------------------------------------------------------------------------------------


class Fuzzed:
    """The daemon under test, the objects it holds, and the failures found so far."""

    def __init__(self, node: ShoalNode, port: int) -> None:
        self.node = node
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v{API_VERSION}"
        self.session = requests.Session()
        self.node_id = ""
        self.report = os.environ.get("SHOAL_FUZZ_REPORT")

    def get(self, path: str) -> Any:
        status, body = self.node.api("GET", f"/v{API_VERSION}{path}")
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def seed_objects(self) -> None:
        """One object of each kind, so that half of the requests can name a real one."""
        for path, body in (
            ("/secrets/create", {"Name": f"s{len(self.get('/secrets'))}", "Data": "c2VjcmV0"}),
            ("/configs/create", {"Name": f"c{len(self.get('/configs'))}", "Data": "Y29uZmln"}),
            ("/networks/create", {"Name": f"n{int(time.time() * 1000)}", "Driver": "overlay"}),
            ("/services/create", {"Name": f"svc{int(time.time() * 1000)}", "TaskTemplate": {
                "ContainerSpec": {"Image": "busybox", "Command": ["sleep", "3600"]}},
                "Mode": {"Replicated": {"Replicas": 1}}}),
        ):
            status, out = self.node.api("POST", f"/v{API_VERSION}{path}", json.dumps(body).encode())
            assert status == 201, f"POST {path}: {status} {out}"

    def real_ids(self, kind: str) -> list[tuple[str, int]]:
        """(id, version) of the live objects of a kind ("networks" have no version: 0)."""
        if kind == "nodes":
            return [(self.node_id, int(self.get(f"/nodes/{self.node_id}")["Version"]["Index"]))]
        objs = self.get(f"/{kind}")
        if not objs and kind != "tasks":
            self.seed_objects()
            objs = self.get(f"/{kind}")
        return [(o["Id"] if "Id" in o else o["ID"], int(o.get("Version", {}).get("Index", 0)))
                for o in sorted(objs, key=lambda o: o.get("Id") or o.get("ID"))]

    def snapshot(self) -> dict[str, dict[str, int]]:
        """kind -> id -> version of every object (nodes: 0, a restarted node's status write bumps its version)."""
        out: dict[str, dict[str, int]] = {}
        for kind in ("services", "secrets", "configs", "networks", "nodes"):
            out[kind] = {o.get("ID") or o["Id"]: 0 if kind == "nodes" else int(o.get("Version", {}).get("Index", 0))
                         for o in self.get(f"/{kind}")}
        return out

    def record(self, entry: dict[str, Any]) -> None:
        if self.report:
            with open(self.report, "a") as f:
                f.write(json.dumps(entry, default=str) + "\n")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    port = free_port()
    node = ShoalNode(tmp_path_factory.mktemp("schemathesis"), extra_args=("--api-tcp", f"127.0.0.1:{port}"))
    node.start()
    try:
        f = Fuzzed(node, port)
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr",
                    f"127.0.0.1:{free_port()}")
        f.node_id = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        node.docker("node", "update", "--availability", "drain", f.node_id)
        f.seed_objects()
        yield f
    finally:
        node.stop()


# --- requests ----------------------------------------------------------------------------------------------

_KIND = re.compile(r"^/(services|tasks|secrets|configs|networks|nodes)/\{id\}")


def _sanitize(obj: Any) -> None:
    """Keep what a generated body could make the node contact on loopback (see the module docstring)."""
    if isinstance(obj, dict):
        for key in list(obj):
            v = obj[key]
            if key == "RemoteAddrs" and isinstance(v, list):
                obj[key] = [LOOPBACK_CLOSED for _ in v]
            elif key == "URL" and isinstance(v, str):
                obj[key] = f"https://{LOOPBACK_CLOSED}/"
            elif key == "PublishedPort":
                del obj[key]
            else:
                _sanitize(v)
    elif isinstance(obj, list):
        for v in obj:
            _sanitize(v)


def _prepare(f: Fuzzed, case: Any) -> str:
    """Name a real object in half of the `{id}` requests; returns a note of what was changed."""
    path = case.path
    body = case.body if isinstance(case.body, dict | list) else None
    if body is not None:
        _sanitize(body)
    m = _KIND.match(path)
    if not m or not isinstance(case.path_parameters, dict):
        return ""
    h = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
    kind = m.group(1)
    if h % 2 or (kind == "nodes" and case.method.upper() == "DELETE"):
        return ""
    ids = f.real_ids(kind)
    if not ids:
        return ""
    obj_id, version = ids[(h >> 1) % len(ids)]
    case.path_parameters["id"] = obj_id
    if UPDATE_PATHS.match(path.replace("{id}", obj_id)) and isinstance(case.query, dict) and h & 4:
        case.query["version"] = version  # else the generated version reaches a real object
    if kind == "nodes" and isinstance(body, dict) and "Availability" in body:
        body["Availability"] = "drain"  # never let the node run fuzzed commands
    return f"real {kind} {obj_id} v{version}"


def _send(f: Fuzzed, case: Any) -> tuple[int, Any, str]:
    """(status, decoded body, raw text) of one request; streams are read for STREAM_READ seconds."""
    kwargs = case.as_transport_kwargs(base_url=f.base_url)
    if STREAMING.match(case.path):
        # The headers must come within STREAM_IDLE (dockerd sends them at once, also with follow=true);
        # then the body is read until STREAM_READ passes or STREAM_IDLE goes by without a chunk.
        with f.session.request(**kwargs, stream=True, timeout=(5, STREAM_IDLE)) as r:
            raw = b""
            if r.status_code < 300:
                deadline = time.monotonic() + STREAM_READ
                with contextlib.suppress(requests.exceptions.ConnectionError):
                    for chunk in r.iter_content(4096):
                        raw += chunk
                        if time.monotonic() > deadline or len(raw) > 1 << 20:
                            break
            else:
                raw = r.content
            status = r.status_code
    else:
        r = f.session.request(**kwargs, timeout=REQUEST_TIMEOUT)
        status, raw = r.status_code, r.content
    text = raw[:2000].decode(errors="replace")
    try:
        body = json.loads(raw) if status >= 300 else None
    except ValueError:
        body = None
    return status, body, text


@hypothesis_seed(SEED)
@settings(phases=[Phase.explicit, Phase.generate], deadline=None, database=None, derandomize=False,
          suppress_health_check=list(HealthCheck), max_examples=MAX_EXAMPLES)
@schema.parametrize()
def test_no_server_errors(case: Any, fuzzed: Fuzzed) -> None:
    f = fuzzed
    if case.method.upper() != case.operation.method.upper():
        return  # the coverage phase's unexpected-method cases: test_undeclared_methods sends those, one test a path
    note = _prepare(f, case)
    body = "none" if type(case.body).__name__ == "NotSet" else json.dumps(case.body, default=repr)[:1500]
    request = f"{case.method.upper()} {case.formatted_path} query={case.query!r} headers={case.headers!r} body={body}"
    try:
        status, body, text = _send(f, case)
    except requests.exceptions.RequestException as e:
        alive = f.node.proc is not None and f.node.proc.poll() is None
        f.record({"operation": f"{case.method.upper()} {case.path}", "request": request, "note": note,
                  "error": f"{type(e).__name__}: {e}", "daemon_alive": alive})
        raise AssertionError(f"{request} ({note}): no answer: {type(e).__name__}: {e}; daemon alive: {alive}\n"
                             f"{f.node.log_tail(30) if not alive else ''}") from None
    if f.node.proc is None or f.node.proc.poll() is not None:
        f.record({"operation": f"{case.method.upper()} {case.path}", "request": request, "note": note,
                  "status": status, "response": text, "daemon_alive": False})
        raise AssertionError(f"the daemon exited after {request}:\n{f.node.log_tail(40)}")
    if status >= 500 and allowed(case.method.upper(), case.path, status, body, case.query) is None:
        f.record({"operation": f"{case.method.upper()} {case.path}", "request": request, "note": note,
                  "status": status, "response": text})
        raise AssertionError(f"{request} ({note}) -> {status} {text[:500]}")


def _undeclared() -> list[tuple[str, list[str]]]:
    """(path template, methods the spec does not give it) of every swarm path of the spec."""
    import yaml

    paths = yaml.safe_load(SPEC.read_text())["paths"]
    out = [(p, [m for m in ("GET", "POST", "PUT", "DELETE", "PATCH") if m.lower() not in paths[p]])
           for p in sorted(paths) if re.search(SWARM_PATHS, p) and not re.search(NOT_SENT, p)]
    return [(p, ms) for p, ms in out if ms]


@pytest.mark.parametrize(("path", "methods"), _undeclared(), ids=[p for p, _ in _undeclared()])
def test_undeclared_methods(fuzzed: Fuzzed, path: str, methods: list[str]) -> None:
    """schemathesis' unsupported-method case, for every swarm path: dockerd's router answers a method it has no
    route for with a 4xx and a JSON message (404 "page not found"), never a 5xx."""
    f = fuzzed
    url = f.base_url + path.replace("{id}", "x").replace("{name}", "x")
    bad = []
    for method in methods:
        r = f.session.request(method, url, data=b"{}", headers={"Content-Type": "application/json"},
                              timeout=REQUEST_TIMEOUT)
        assert f.node.proc is not None and f.node.proc.poll() is None, f"the daemon exited:\n{f.node.log_tail(40)}"
        try:
            shaped = isinstance(r.json().get("message"), str)
        except ValueError:
            shaped = False
        if not (400 <= r.status_code < 500 and shaped):
            bad.append(f"{method} -> {r.status_code} {r.text[:300]}")
            f.record({"operation": f"{method} {path}", "request": f"{method} {url} body={{}}", "note": "undeclared",
                      "status": r.status_code, "response": r.text[:2000]})
    assert not bad, f"{url}:\n" + "\n".join(bad)


def test_daemon_survived_and_restarts(fuzzed: Fuzzed) -> None:
    f = fuzzed
    node = f.node
    assert node.proc is not None and node.proc.poll() is None, f"the daemon is gone:\n{node.log_tail(40)}"
    assert node.ping()
    swarm = f.get("/swarm")
    unlock_key = ""
    if swarm.get("Spec", {}).get("EncryptionConfig", {}).get("AutoLockManagers"):
        unlock_key = f.get("/swarm/unlockkey")["UnlockKey"]
    before = f.snapshot()
    node.terminate()
    node.start()
    if unlock_key:
        status, out = node.api("POST", f"/v{API_VERSION}/swarm/unlock",
                               json.dumps({"UnlockKey": unlock_key}).encode())
        assert status == 200, f"unlock after restart: {status} {out}"
    def active() -> bool:
        swarm = _attempt(lambda: f.get("/info")["Swarm"])
        return bool(swarm and swarm["LocalNodeState"] == "active" and swarm["ControlAvailable"])

    wait_until(active, 30, what="the swarm to be active again")
    seen: list[Any] = []
    with contextlib.suppress(AssertionError):
        wait_until(lambda: seen.append(_attempt(f.snapshot)) or seen[-1] == before, 30, interval=0.5)
    assert seen and seen[-1] == before, (
        f"objects before the restart: {before}\nafter: {seen[-1] if seen else None}\n{node.log_tail(30)}")
    assert node.proc is not None and node.proc.poll() is None


def _attempt(fn: Any) -> Any:
    """fn(), or None while the restarted daemon is not answering yet."""
    try:
        return fn()
    except (AssertionError, OSError, KeyError):
        return None
