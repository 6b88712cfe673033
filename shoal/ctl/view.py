"""What `shoal status` and `shoal top` show: the cluster as one daemon's Engine API reports it, read once
(`gather`), summed up (pure functions over the API's JSON) and drawn with rich (`status_view`, `top_view`).

A `Snapshot` is plain Engine API JSON: `/info`, `/version`, `/nodes`, `/services?status=true`, `/tasks`, and
Shoal's `/_shoal/raft` (empty when the daemon is not a Shoal manager). The summaries never fetch anything, so the
rendering is tested on JSON written by hand.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shoal.ctl.client import APIError, Client

JSON = dict[str, Any]

LIVE = "running"


@dataclass
class Snapshot:
    endpoint: str
    info: JSON
    version: JSON
    nodes: list[JSON] = field(default_factory=list)
    services: list[JSON] = field(default_factory=list)
    tasks: list[JSON] = field(default_factory=list)
    raft: JSON = field(default_factory=dict)
    error: str = ""  # why the swarm part is missing (not a manager, swarm not initialised)
    taken_at: float = 0.0


def gather(client: Client) -> Snapshot:
    """One consistent-enough read of everything `status` and `top` show (a few GETs, no watch)."""
    snap = Snapshot(client.endpoint.url, client.get("/info") or {}, client.get("/version") or {},
                    taken_at=time.time())
    try:
        snap.nodes = list(client.get("/nodes") or [])
        snap.services = list(client.get("/services", status="true") or [])
        snap.tasks = list(client.get("/tasks") or [])
    except APIError as e:
        snap.error = e.message
    try:
        raft = client.get("/_shoal/raft")
        snap.raft = raft if isinstance(raft, dict) else {}
    except APIError:
        snap.raft = {}  # not a Shoal daemon, or an older one
    return snap


# --- summaries ------------------------------------------------------------------------------------------


def node_name(n: JSON) -> str:
    return str((n.get("Description") or {}).get("Hostname") or n.get("ID", "")[:12])


def service_name(s: JSON) -> str:
    return str((s.get("Spec") or {}).get("Name") or s.get("ID", "")[:12])


def _live(t: JSON) -> bool:
    return bool(t.get("DesiredState") == LIVE and (t.get("Status") or {}).get("State") == LIVE)


@dataclass(frozen=True)
class RaftHealth:
    managers: int
    reachable: int
    leader: str  # the leader's hostname, "" when none is known
    quorum: int
    verdict: str  # healthy | degraded | no quorum | no leader | not a manager

    @property
    def ok(self) -> bool:
        return self.verdict == "healthy"


def raft_health(snap: Snapshot) -> RaftHealth:
    """The managers' health from their ManagerStatus (what the leader sees) and this daemon's Raft member."""
    managers = [n for n in snap.nodes if n.get("ManagerStatus")]
    if not managers:
        return RaftHealth(0, 0, "", 0, "not a manager")
    reachable = sum(1 for n in managers if n["ManagerStatus"].get("Reachability") == "reachable")
    leader = next((node_name(n) for n in managers if n["ManagerStatus"].get("Leader")), "")
    quorum = len(managers) // 2 + 1
    if reachable < quorum:
        verdict = "no quorum"
    elif not leader or (snap.raft and not snap.raft.get("leader")):
        verdict = "no leader"
    elif reachable < len(managers):
        verdict = "degraded"
    else:
        verdict = "healthy"
    return RaftHealth(len(managers), reachable, leader, quorum, verdict)


@dataclass(frozen=True)
class ServiceRow:
    id: str
    name: str
    mode: str
    running: int
    desired: int
    image: str
    update: str  # UpdateStatus.State, "" when there was none
    update_message: str
    pending: int  # tasks meant to run that no node takes
    state: str  # converged | converging | updating | rolling back | paused | unplaceable | completed

    @property
    def converged(self) -> bool:
        return self.state in ("converged", "completed")


def _mode(spec: JSON) -> str:
    mode = spec.get("Mode") or {}
    for key, name in (("Replicated", "replicated"), ("Global", "global"), ("ReplicatedJob", "replicated-job"),
                      ("GlobalJob", "global-job")):
        if key in mode:
            return name
    return "replicated"


def short_image(image: str) -> str:
    return image.split("@", 1)[0]


def service_rows(snap: Snapshot) -> list[ServiceRow]:
    """Each service with its replicas (ServiceStatus, as `docker service ls` counts them) and whether it has
    converged, sorted by name."""
    by_service: dict[str, list[JSON]] = defaultdict(list)
    for t in snap.tasks:
        by_service[str(t.get("ServiceID", ""))].append(t)
    rows = []
    for s in snap.services:
        spec = s.get("Spec") or {}
        st = s.get("ServiceStatus") or {}
        ts = by_service.get(s.get("ID", ""), [])
        running = int(st.get("RunningTasks", sum(1 for t in ts if _live(t))))
        mode = _mode(spec)
        if "DesiredTasks" in st:
            desired = int(st["DesiredTasks"])
        elif mode == "replicated":
            desired = int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1))
        else:
            desired = sum(1 for t in ts if t.get("DesiredState") == LIVE)
        pending = sum(1 for t in ts if t.get("DesiredState") == LIVE
                      and (t.get("Status") or {}).get("State") in ("pending", "new", "allocated"))
        upd = s.get("UpdateStatus") or {}
        ustate = str(upd.get("State") or "")
        image = short_image(str(((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")))
        if ustate in ("paused", "rollback_paused"):
            state = "paused"
        elif ustate == "updating":
            state = "updating"
        elif ustate == "rollback_started":
            state = "rolling back"
        elif mode.endswith("job"):
            state = "completed" if running == 0 and pending == 0 else "converging"
        elif pending and running < desired:
            state = "unplaceable" if any((t.get("Status") or {}).get("Err") for t in ts
                                         if t.get("DesiredState") == LIVE) else "converging"
        elif running != desired or any(t.get("DesiredState") in (LIVE, "ready") and not _live(t) for t in ts):
            state = "converging"
        else:
            state = "converged"
        rows.append(ServiceRow(str(s.get("ID", "")), service_name(s), mode, running, desired, image, ustate,
                               str(upd.get("Message") or ""), pending, state))
    return sorted(rows, key=lambda r: r.name)


@dataclass(frozen=True)
class Unplaceable:
    service: str
    count: int
    reason: str
    since: str  # the oldest such task's status timestamp


def unplaceable(snap: Snapshot) -> list[Unplaceable]:
    """Tasks meant to run that the scheduler could place nowhere, grouped by service and reason (Status.Err:
    `no suitable node (...)`)."""
    names = {s.get("ID"): service_name(s) for s in snap.services}
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for t in snap.tasks:
        st = t.get("Status") or {}
        if t.get("DesiredState") == LIVE and st.get("State") == "pending":
            reason = str(st.get("Err") or st.get("Message") or "pending")
            groups[(names.get(t.get("ServiceID"), str(t.get("ServiceID", ""))[:12]), reason)].append(
                str(st.get("Timestamp", "")))
    return sorted((Unplaceable(svc, len(ts), reason, min(ts)) for (svc, reason), ts in groups.items()),
                  key=lambda u: (u.service, u.reason))


@dataclass(frozen=True)
class Failure:
    service: str
    slot: str
    state: str
    err: str
    when: str


def recent_failures(snap: Snapshot, limit: int = 5) -> list[Failure]:
    """The newest tasks that ended in failed or rejected, with their error."""
    names = {s.get("ID"): service_name(s) for s in snap.services}
    bad = [t for t in snap.tasks if (t.get("Status") or {}).get("State") in ("failed", "rejected")]
    bad.sort(key=lambda t: str((t.get("Status") or {}).get("Timestamp", "")), reverse=True)
    out = []
    for t in bad[:limit]:
        st = t.get("Status") or {}
        slot = str(t.get("Slot") or str(t.get("NodeID", ""))[:12])
        out.append(Failure(names.get(t.get("ServiceID"), str(t.get("ServiceID", ""))[:12]), slot,
                           str(st.get("State")), str(st.get("Err") or st.get("Message") or ""),
                           str(st.get("Timestamp", ""))[:19]))
    return out


@dataclass(frozen=True)
class NodeRow:
    id: str
    name: str
    role: str  # worker | leader | reachable | unreachable
    state: str
    availability: str
    tasks: int
    cpus: float
    memory: int
    cpus_reserved: float
    memory_reserved: int


def node_rows(snap: Snapshot) -> list[NodeRow]:
    """Each node with its running tasks and what they reserve against what it offers; managers first."""
    per_node: Counter[str] = Counter()
    cpu_res: dict[str, float] = defaultdict(float)
    mem_res: dict[str, int] = defaultdict(int)
    for t in snap.tasks:
        if t.get("DesiredState") != LIVE or not t.get("NodeID"):
            continue
        nid = str(t["NodeID"])
        if _live(t):
            per_node[nid] += 1
        res = (((t.get("Spec") or {}).get("Resources") or {}).get("Reservations") or {})
        cpu_res[nid] += int(res.get("NanoCPUs") or 0) / 1e9
        mem_res[nid] += int(res.get("MemoryBytes") or 0)
    rows = []
    for n in snap.nodes:
        ms = n.get("ManagerStatus")
        role = "worker"
        if ms:
            role = "leader" if ms.get("Leader") else str(ms.get("Reachability") or "unknown")
        res = (n.get("Description") or {}).get("Resources") or {}
        nid = str(n.get("ID", ""))
        rows.append(NodeRow(nid, node_name(n), role, str((n.get("Status") or {}).get("State", "")),
                            str((n.get("Spec") or {}).get("Availability", "")), per_node[nid],
                            int(res.get("NanoCPUs") or 0) / 1e9, int(res.get("MemoryBytes") or 0),
                            cpu_res[nid], mem_res[nid]))
    order = {"leader": 0, "reachable": 1, "unreachable": 1, "unknown": 1, "worker": 2}
    return sorted(rows, key=lambda r: (order.get(r.role, 3), r.name))


# --- drawing --------------------------------------------------------------------------------------------

_STATE_STYLE = {"converged": "green", "completed": "green", "converging": "yellow", "updating": "cyan",
                "rolling back": "magenta", "paused": "bold red", "unplaceable": "bold red"}
_VERDICT_STYLE = {"healthy": "green", "degraded": "yellow", "no quorum": "bold red", "no leader": "bold red",
                  "not a manager": "dim"}


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"


def header(snap: Snapshot) -> Text:
    sw = snap.info.get("Swarm") or {}
    ver = snap.version.get("Version") or snap.info.get("ServerVersion") or "?"
    t = Text()
    t.append("Shoal ", style="bold")
    t.append(f"{ver} at {snap.endpoint}; this node {snap.info.get('Name', '?')} "
             f"({sw.get('NodeID', '')[:12] or 'no swarm'}), swarm {sw.get('LocalNodeState', '?')}")
    cluster = sw.get("Cluster") or {}
    if cluster.get("ID"):
        t.append(f", cluster {cluster['ID'][:12]}")
    return t


def raft_view(snap: Snapshot) -> RenderableType:
    h = raft_health(snap)
    t = Text()
    t.append("Raft: ", style="bold")
    t.append(h.verdict, style=_VERDICT_STYLE.get(h.verdict, ""))
    if h.managers:
        t.append(f"; {h.reachable}/{h.managers} managers reachable (quorum {h.quorum}); leader {h.leader or '-'}")
    r = snap.raft
    if r:
        lag = int(r.get("commit", 0)) - int(r.get("applied", 0))
        t.append(f"\n      this member: {r.get('role', '?')}, term {r.get('term', '?')}, commit {r.get('commit', '?')},"
                 f" applied {r.get('applied', '?')} (lag {lag}), log {r.get('first_index', '?')}-"
                 f"{r.get('last_index', '?')}, snapshot at {r.get('snapshot_index', '?')}, "
                 f"{len(r.get('voters') or [])} voters")
    return t


def nodes_table(snap: Snapshot) -> Table:
    table = Table(title="Nodes", title_justify="left", expand=False, box=box.SIMPLE_HEAD)
    for col in ("NODE", "ROLE", "STATUS", "AVAILABILITY", "TASKS", "CPU RES/ALL", "MEM RES/ALL"):
        table.add_column(col, justify="right" if col == "TASKS" else "left", min_width=len(col) if col[0] != "N"
                         else 4)
    for r in node_rows(snap):
        role_style = {"leader": "bold", "unreachable": "bold red"}.get(r.role, "")
        state_style = "green" if r.state == "ready" else "bold red"
        avail_style = "" if r.availability == "active" else "yellow"
        table.add_row(r.name, Text(r.role, style=role_style), Text(r.state, style=state_style),
                      Text(r.availability, style=avail_style), str(r.tasks),
                      f"{r.cpus_reserved:g}/{r.cpus:g}",
                      f"{human_bytes(r.memory_reserved)}/{human_bytes(r.memory)}")
    return table


def services_table(snap: Snapshot) -> Table:
    table = Table(title="Services", title_justify="left", expand=False, box=box.SIMPLE_HEAD)
    for col in ("SERVICE", "MODE", "REPLICAS", "IMAGE", "STATE"):
        table.add_column(col)
    for r in service_rows(snap):
        state = Text(r.state, style=_STATE_STYLE.get(r.state, ""))
        if r.update_message and r.state in ("paused", "updating", "rolling back"):
            state.append(f": {r.update_message}", style="dim")
        table.add_row(r.name, r.mode, f"{r.running}/{r.desired}", r.image, state)
    return table


def problems_view(snap: Snapshot) -> RenderableType:
    parts: list[RenderableType] = []
    un = unplaceable(snap)
    if un:
        t = Table(title="Unplaceable", title_justify="left", title_style="bold red", box=box.SIMPLE_HEAD)
        for col in ("SERVICE", "TASKS", "WHY", "SINCE"):
            t.add_column(col)
        for u in un:
            t.add_row(u.service, str(u.count), u.reason, u.since[:19])
        parts.append(t)
    else:
        parts.append(Text("Unplaceable: none", style="green"))
    fails = recent_failures(snap)
    if fails:
        t = Table(title="Recent task failures", title_justify="left", title_style="yellow", box=box.SIMPLE_HEAD)
        for col in ("SERVICE", "SLOT", "STATE", "ERROR", "WHEN"):
            t.add_column(col)
        for f in fails:
            t.add_row(f.service, f.slot, f.state, f.err, f.when)
        parts.append(t)
    return Group(*parts)


def status_view(snap: Snapshot) -> RenderableType:
    """`shoal status`: one screen."""
    if snap.error:
        parts: list[RenderableType] = [header(snap), Text(snap.error, style="bold red")]
        sw = snap.info.get("Swarm") or {}
        managers = [str(m.get("Addr", "")) for m in sw.get("RemoteManagers") or [] if m.get("Addr")]
        if sw.get("LocalNodeState") == "active" and not sw.get("ControlAvailable") and managers:
            parts.append(Text(f"This node is a worker; the swarm's managers are at {', '.join(managers)} (their "
                              "swarm ports): point -H or DOCKER_HOST at a manager's API."))
        return Group(*parts)
    rows = service_rows(snap)
    settled = sum(1 for r in rows if r.converged)
    summary = Text(f"{len(rows)} services, {settled} converged, {len(rows) - settled} not",
                   style="green" if settled == len(rows) else "yellow")
    return Group(header(snap), raft_view(snap), Text(""), nodes_table(snap), Text(""), services_table(snap),
                 summary, Text(""), problems_view(snap))


def event_line(ev: JSON) -> Text:
    """One event as `docker events` prints it, shortened: time, type, action, name."""
    when = time.strftime("%H:%M:%S", time.localtime(int(ev.get("time", 0))))
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    name = attrs.get("name") or str(actor.get("ID", ""))[:12]
    extra = ""
    for key in ("replicas.new", "updatestate.new", "availability.new", "state.new"):
        if key in attrs:
            extra += f" {key.split('.')[0]}={attrs[key]}"
    t = Text(f"{when} ", style="dim")
    t.append(f"{ev.get('Type', '')} {ev.get('Action', '')} ", style="bold")
    t.append(f"{name}{extra}")
    return t


def top_view(snap: Snapshot, events: list[JSON], interval: float) -> RenderableType:
    """`shoal top`: the status screen's tables with the newest events under them."""
    if snap.error:
        return status_view(snap)
    clock = time.strftime("%H:%M:%S", time.localtime(snap.taken_at))
    title = Text(f"shoal top - {clock}, every {interval:g}s (Ctrl-C quits)", style="bold reverse")
    ev = Table(title="Events", title_justify="left", show_header=False, box=None)
    ev.add_column("event")
    for e in events[-10:]:
        ev.add_row(event_line(e))
    if not events:
        ev.add_row(Text("none yet", style="dim"))
    return Group(title, header(snap), raft_view(snap), nodes_table(snap), services_table(snap),
                 problems_view(snap), ev)
