"""The page's model of the cluster, built from Engine API answers by pure functions.

Each object is rebuilt field by field from what the page shows, never passed through: a secret's or a config's
payload (`Spec.Data`), environment variables and anything else not named here cannot reach the browser, whatever
the Engine API answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

JSON = dict[str, Any]

# Task states shown in the grid as alive (swarm-dashboard draws these; the rest are history).
LIVE = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")


def _d(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... or None where a level is missing."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _labels(obj: Any) -> dict[str, str]:
    raw = obj if isinstance(obj, dict) else {}
    return {str(k): str(v) for k, v in raw.items()}


def node_view(n: JSON, heartbeats: dict[str, float], tasks: list[JSON], services: dict[str, JSON]) -> JSON:
    mine = [t for t in tasks if t.get("NodeID") == n["ID"] and _d(t, "Status", "State") in LIVE
            and t.get("DesiredState") == "running"]
    cpus = mem = 0
    for t in mine:
        res = _d(t, "Spec", "Resources", "Reservations") or {}
        cpus += int(res.get("NanoCPUs") or 0)
        mem += int(res.get("MemoryBytes") or 0)
    ms = n.get("ManagerStatus") or {}
    return {
        "id": n["ID"],
        "hostname": str(_d(n, "Description", "Hostname") or ""),
        "role": str(_d(n, "Spec", "Role") or ""),
        "availability": str(_d(n, "Spec", "Availability") or ""),
        "state": str(_d(n, "Status", "State") or ""),
        "message": str(_d(n, "Status", "Message") or ""),
        "addr": str(_d(n, "Status", "Addr") or ""),
        "leader": bool(ms.get("Leader")),
        "reachability": str(ms.get("Reachability") or ""),
        "manager_addr": str(ms.get("Addr") or ""),
        "heartbeat_age": heartbeats.get(n["ID"]),
        "engine": str(_d(n, "Description", "Engine", "EngineVersion") or ""),
        "platform": "/".join(str(x) for x in (_d(n, "Description", "Platform", "OS"),
                                              _d(n, "Description", "Platform", "Architecture")) if x),
        "nano_cpus": int(_d(n, "Description", "Resources", "NanoCPUs") or 0),
        "memory": int(_d(n, "Description", "Resources", "MemoryBytes") or 0),
        "reserved_nano_cpus": cpus,
        "reserved_memory": mem,
        "tasks": len(mine),
        "services": sorted({services[t["ServiceID"]]["Spec"]["Name"] for t in mine if t.get("ServiceID") in services}),
        "labels": _labels(_d(n, "Spec", "Labels")),
    }


def _ports(s: JSON) -> list[str]:
    out = []
    for p in _d(s, "Endpoint", "Ports") or _d(s, "Endpoint", "Spec", "Ports") or []:
        pub, tgt = p.get("PublishedPort"), p.get("TargetPort")
        mode = p.get("PublishMode") or "ingress"
        out.append(f"{pub or '*'}:{tgt}/{p.get('Protocol') or 'tcp'}" + ("" if mode == "ingress" else f" ({mode})"))
    return out


def _mode(s: JSON) -> tuple[str, int | None]:
    mode = _d(s, "Spec", "Mode") or {}
    if "Replicated" in mode:
        return "replicated", int((mode["Replicated"] or {}).get("Replicas") or 0)
    if "Global" in mode:
        return "global", None
    if "ReplicatedJob" in mode:
        return "replicated-job", int((mode["ReplicatedJob"] or {}).get("TotalCompletions") or 0)
    if "GlobalJob" in mode:
        return "global-job", None
    return "", None


def task_view(t: JSON) -> JSON:
    return {
        "id": t["ID"],
        "service_id": str(t.get("ServiceID") or ""),
        "slot": t.get("Slot"),
        "node_id": str(t.get("NodeID") or ""),
        "desired": str(t.get("DesiredState") or ""),
        "state": str(_d(t, "Status", "State") or ""),
        "message": str(_d(t, "Status", "Message") or ""),
        "error": str(_d(t, "Status", "Err") or ""),
        "exit_code": _d(t, "Status", "ContainerStatus", "ExitCode"),
        "timestamp": str(_d(t, "Status", "Timestamp") or ""),
        "created": str(t.get("CreatedAt") or ""),
        "image": str(_d(t, "Spec", "ContainerSpec", "Image") or ""),
        "version": _d(t, "Version", "Index"),
        # Started in place of a running task elsewhere: "drain" or "rebalance" (docs/drain.md, docs/rebalance.md).
        "moved": str((t.get("Labels") or {}).get("com.shoal.move") or ""),
    }


def _when(iso: str) -> float | None:
    """An Engine API timestamp (RFC 3339, nanoseconds) as a Unix time; None when absent or unreadable."""
    if not iso or iso.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _progress(us: JSON, mine: list[JSON], desired: int) -> str:
    """An update or rollback in progress as "N/M": running tasks started since it began, of the desired."""
    if us.get("State") not in ("updating", "rollback_started"):
        return ""
    began = _when(str(us.get("StartedAt") or ""))
    if began is None:
        return ""
    fresh = sum(1 for t in mine if t["state"] == "running" and t["desired"] == "running"
                and (_when(t["created"]) or 0) >= began)
    return f"{fresh}/{desired}"


def _duration(ns: Any) -> str:
    """Nanoseconds as the CLI prints a duration (1m30s, 5s, 500ms); "" for none."""
    if not ns:
        return ""
    ns = int(ns)
    if ns < 1_000_000_000:
        return f"{ns // 1_000_000}ms"
    secs = ns // 1_000_000_000
    h, rem = divmod(secs, 3600)
    m, sec = divmod(rem, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{sec}s" if sec or not (h or m) else "")


def _resources(r: Any) -> str:
    r = r if isinstance(r, dict) else {}
    parts = []
    if r.get("NanoCPUs"):
        parts.append(f"{int(r['NanoCPUs']) / 1e9:g} CPU")
    if r.get("MemoryBytes"):
        parts.append(f"{int(r['MemoryBytes']) // (1 << 20)} MiB")
    return ", ".join(parts)


def spec_view(s: JSON, network_names: dict[str, str]) -> JSON:
    """What an operator checks of a service's spec, as names and settings only: never its environment, command,
    or a secret's or config's content (secrets and configs by name and target file)."""
    tt = _d(s, "Spec", "TaskTemplate") or {}
    cs = tt.get("ContainerSpec") or {}
    uc = _d(s, "Spec", "UpdateConfig") or {}
    rc = tt.get("RestartPolicy") or {}

    def update(c: Any) -> str:
        c = c if isinstance(c, dict) else {}
        if not c:
            return ""
        return (f"parallelism {c.get('Parallelism', 1)}, delay {_duration(c.get('Delay')) or '0s'}, "
                f"on failure {c.get('FailureAction') or 'pause'}, order {c.get('Order') or 'stop-first'}")

    nets = [n.get("Target", "") for n in (tt.get("Networks") or _d(s, "Spec", "Networks") or [])]
    return {
        "constraints": [str(c) for c in _d(tt, "Placement", "Constraints") or []],
        "max_replicas_per_node": int(_d(tt, "Placement", "MaxReplicas") or 0),
        "reservations": _resources(_d(tt, "Resources", "Reservations")),
        "limits": _resources(_d(tt, "Resources", "Limits")),
        "restart": (f"{rc.get('Condition') or 'any'}, delay {_duration(rc.get('Delay')) or '5s'}"
                    + (f", at most {rc['MaxAttempts']} attempts" if rc.get("MaxAttempts") else "")) if rc else "",
        "update": update(uc),
        "rollback": update(_d(s, "Spec", "RollbackConfig")),
        "networks": [network_names.get(n, n) for n in nets],
        "secrets": [f"{x.get('SecretName', '')} → {_d(x, 'File', 'Name') or ''}" for x in cs.get("Secrets") or []],
        "configs": [f"{x.get('ConfigName', '')} → {_d(x, 'File', 'Name') or ''}" for x in cs.get("Configs") or []],
        "mounts": [f"{m.get('Type', 'volume')} {m.get('Source') or '(anonymous)'} → {m.get('Target', '')}"
                   + (" (ro)" if m.get("ReadOnly") else "") for m in cs.get("Mounts") or []],
        "labels": _labels(_d(s, "Spec", "Labels")),
    }


def cron_view(labels: dict[str, str]) -> JSON | None:
    """A service's schedule (docs/cron.md) as its labels give it: the schedule, zone, next and last run (the last
    two are the labels the Engine API shows, never stored); None without a schedule."""
    if labels.get("swarm.cronjob.enable") not in ("1", "t", "T", "TRUE", "true", "True"):
        return None
    return {"schedule": labels.get("swarm.cronjob.schedule", ""),
            "timezone": labels.get("com.shoal.cron.timezone", "") or "UTC",
            "skip_running": labels.get("swarm.cronjob.skip-running", "") in ("1", "t", "T", "TRUE", "true", "True"),
            "next_run": labels.get("com.shoal.cron.next-run", ""),
            "last_run": labels.get("com.shoal.cron.last-run", "")}


def service_view(s: JSON, tasks: list[JSON], network_names: dict[str, str] | None = None) -> JSON:
    mode, replicas = _mode(s)
    mine = [t for t in tasks if t["service_id"] == s["ID"]]
    running = sum(1 for t in mine if t["state"] == "running" and t["desired"] == "running")
    errors = sorted((t for t in mine if t["error"]), key=lambda t: t["timestamp"], reverse=True)
    us = s.get("UpdateStatus") or {}
    labels = _labels(_d(s, "Spec", "Labels"))
    image = str(_d(s, "Spec", "TaskTemplate", "ContainerSpec", "Image") or "")
    desired = int(_d(s, "ServiceStatus", "DesiredTasks") or (replicas or 0))
    return {
        "id": s["ID"],
        "name": str(_d(s, "Spec", "Name") or ""),
        "stack": labels.get("com.docker.stack.namespace", ""),
        "image": image.split("@", 1)[0],
        "mode": mode,
        "replicas": replicas,
        "desired": desired,
        "running": running,
        "ports": _ports(s),
        "update": {"state": str(us.get("State") or ""), "message": str(us.get("Message") or ""),
                   "started": str(us.get("StartedAt") or ""), "completed": str(us.get("CompletedAt") or ""),
                   "progress": _progress(us, mine, desired)},
        "can_rollback": s.get("PreviousSpec") is not None,
        "force_update": int(_d(s, "Spec", "TaskTemplate", "ForceUpdate") or 0),
        "last_error": errors[0]["error"] if errors else "",
        "created": str(s.get("CreatedAt") or ""),
        "updated": str(s.get("UpdatedAt") or ""),
        "version": _d(s, "Version", "Index"),
        "spec": spec_view(s, network_names or {}),
        "cron": cron_view(labels),
    }


def stacks_view(services: list[JSON]) -> list[JSON]:
    stacks: dict[str, list[JSON]] = {}
    for s in services:
        if s["stack"]:
            stacks.setdefault(s["stack"], []).append(s)
    return [{"name": name, "services": [s["name"] for s in ss],
             "desired": sum(s["desired"] for s in ss), "running": sum(s["running"] for s in ss)}
            for name, ss in sorted(stacks.items())]


def secret_view(o: JSON) -> JSON:
    """A secret's or a config's metadata: never its `Data`."""
    return {"id": o["ID"], "name": str(_d(o, "Spec", "Name") or ""), "created": str(o.get("CreatedAt") or ""),
            "updated": str(o.get("UpdatedAt") or ""), "labels": _labels(_d(o, "Spec", "Labels")),
            "driver": str(_d(o, "Spec", "Driver", "Name") or ""),
            "templating": str(_d(o, "Spec", "Templating", "Name") or "")}


def network_view(n: JSON) -> JSON:
    ipam = [{"subnet": str(c.get("Subnet") or ""), "gateway": str(c.get("Gateway") or "")}
            for c in _d(n, "IPAM", "Config") or []]
    return {"id": n["Id"] if "Id" in n else n.get("ID", ""), "name": str(n.get("Name") or ""),
            "driver": str(n.get("Driver") or ""), "scope": str(n.get("Scope") or ""),
            "attachable": bool(n.get("Attachable")), "ingress": bool(n.get("Ingress")),
            "internal": bool(n.get("Internal")), "subnets": ipam, "labels": _labels(n.get("Labels"))}


RAFT_FIELDS = ("id", "term", "commit", "applied", "role", "leader", "is_leader", "voters", "first_index",
               "last_index", "snapshot_index", "snapshots_taken", "snapshots_installed", "catchup_entries",
               "store_version", "election_timeout", "leader_loops", "objects")


def raft_member(raft: JSON) -> JSON:
    """This manager's Raft member as /_shoal/raft tells it, the fields the page shows."""
    own = {k: raft[k] for k in RAFT_FIELDS if k in raft}
    # Raft IDs are 64-bit: a browser's JSON numbers (doubles) would round them.
    for k in ("id", "leader"):
        if k in own:
            own[k] = str(own[k])
    if "voters" in own:
        own["voters"] = [str(v) for v in own["voters"]]
    if "commit" in own and "applied" in own:
        own["apply_lag"] = int(own["commit"]) - int(own["applied"])
    return own


def raft_view(raft: JSON, nodes: list[JSON]) -> JSON:
    """This manager's Raft member (/_shoal/raft) and every manager's reachability as the swarm records it."""
    own = raft_member(raft)
    managers = [{"id": n["id"], "hostname": n["hostname"], "addr": n["manager_addr"], "leader": n["leader"],
                 "reachability": n["reachability"]} for n in nodes if n["role"] == "manager"]
    reachable = sum(1 for m in managers if m["reachability"] == "reachable")
    return {"member": own, "managers": managers, "quorum": len(managers) // 2 + 1, "reachable": reachable,
            "healthy": bool(managers) and reachable >= len(managers) // 2 + 1
            and any(m["leader"] for m in managers)}


def snapshot(*, info: JSON, nodes: list[JSON], services: list[JSON], tasks: list[JSON], secrets: list[JSON],
             configs: list[JSON], networks: list[JSON], raft: JSON, heartbeats: JSON) -> JSON:
    """The whole page model from the Engine API's answers."""
    by_id = {s["ID"]: s for s in services}
    ages = {str(k): float(v) for k, v in (heartbeats.get("nodes") or {}).items()}
    tv = sorted((task_view(t) for t in tasks), key=lambda t: (t["service_id"], t["slot"] or 0, t["created"]))
    nv = sorted((node_view(n, ages, tasks, by_id) for n in nodes), key=lambda n: (n["role"] != "manager",
                                                                                     n["hostname"]))
    net_names = {str(n.get("Id") or n.get("ID") or ""): str(n.get("Name") or "") for n in networks}
    sv = sorted((service_view(s, tv, net_names) for s in services), key=lambda s: s["name"])
    swarm = info.get("Swarm") or {}
    return {
        "self": {"node_id": str(swarm.get("NodeID") or ""), "hostname": str(info.get("Name") or ""),
                 "state": str(swarm.get("LocalNodeState") or ""),
                 "manager": bool(swarm.get("ControlAvailable")),
                 "cluster_id": str(_d(swarm, "Cluster", "ID") or ""),
                 "heartbeat_period": heartbeats.get("period")},
        "nodes": nv,
        "services": sv,
        "stacks": stacks_view(sv),
        "tasks": tv,
        "secrets": sorted((secret_view(o) for o in secrets), key=lambda o: o["name"]),
        "configs": sorted((secret_view(o) for o in configs), key=lambda o: o["name"]),
        "networks": sorted((network_view(n) for n in networks if n.get("Scope") == "swarm"),
                           key=lambda n: n["name"]),
        "raft": raft_view(raft, nv),
    }
