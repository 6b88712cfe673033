"""System endpoints: ping, version, info, distribution, and Shoal's own `/_shoal/agent`, `/_shoal/raft` and
`/_shoal/log`, `/_shoal/usage`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shoal import ca as CA
from shoal import logring
from shoal.engineapi import convert as C
from shoal.engineapi.nodeapi import NodeAPI
from shoal.engineapi.routes.common import json_ok, manager_of, node_of
from shoal.engineapi.routes.registry import route
from shoal.engineapi.server import (
    ENGINE_KEY,
    error_response,
    ping_headers,
    version_body,
)
from shoal.errors import InvalidArgument
from shoal.manager.usage import usage_document

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


@route("GET", "/_shoal/log", leader=False)
async def daemon_log(request: web.Request) -> web.StreamResponse:
    """Shoal's own diagnostic (not an Engine API path): this daemon's newest log lines (`tail`, default 500, at
    most what the daemon keeps), for `shoal diagnose`. `kept` is false where the process keeps no log ring."""
    raw = request.query.get("tail", "500")
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise InvalidArgument(f"invalid tail value {raw!r}: a whole number of lines, 0 or more")
    lines = logring.tail(n)
    return json_ok({"kept": lines is not None, "lines": lines or []})


@route("GET", "/_shoal/heartbeats")
async def heartbeats(request: web.Request) -> web.StreamResponse:
    """Shoal's own diagnostic (not an Engine API path), answered by the leader, whose dispatcher holds the agents'
    sessions: each connected node's seconds since its last heartbeat and the heartbeat period (the web view's
    heartbeat age)."""
    d = node_of(request).require_manager().dispatcher
    return json_ok({"period": d.heartbeat_period(),
                    "nodes": {nid: round(age, 3) for nid, age in sorted(d.heartbeat_ages().items())}})


@route("GET", "/_shoal/usage")
async def usage(request: web.Request) -> web.StreamResponse:
    """Shoal's own read-only view (not an Engine API path) of what tasks actually use, per node, service and
    task, from the usage reports the leader holds in memory (a follower relays the request to the leader): the
    document docs/metrics.md describes, for the web view and an autoscaler."""
    manager = manager_of(request)
    d = manager.dispatcher
    return json_ok(usage_document(manager.store.view(), d.current_usage(), d.usage.stale_after))


@route("GET", "/version", leader=False)
async def version(request: web.Request) -> web.StreamResponse:
    return json_ok(version_body())


def swarm_info(node: NodeAPI) -> dict[str, Any]:
    if node.locked:
        return {"NodeID": node.node_id, "NodeAddr": node.addr, "LocalNodeState": "locked", "ControlAvailable": False,
                "Error": "", "RemoteManagers": None}
    if node.state == "pending":  # leaving: inactive once its swarm state is gone
        return {"NodeID": node.node_id, "NodeAddr": node.addr, "LocalNodeState": "pending", "ControlAvailable": False,
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
