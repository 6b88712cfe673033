"""Following a long operation to its end: services converging (after a scale, update or rollback) and a node
draining, drawn as rich progress bars, as `docker service update --detach=false` follows an update.

`service_state` and `drain_state` read the API once and say how far things are; `follow` polls them until each is
done, failed or the timeout passes. A service is converged when no update or rollback is under way, every task
meant to run is running, and as many of those as the service wants run its current task template.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from shoal.ctl.client import Client, filters

JSON = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """How far one followed thing is: `done` of `total`, a word on what is happening, and whether it ended."""
    name: str
    done: int
    total: int
    note: str
    finished: bool = False
    failed: str = ""  # why it cannot finish (an update paused, a service gone)


_CONTAINER_KEYS = ("Image", "Command", "Args", "Env", "Dir", "User", "Mounts", "Secrets", "Configs", "Labels")


def template_key(tmpl: JSON) -> tuple[str, ...]:
    """What of a task template tells one version of a service from another, in a form both a service's
    TaskTemplate and a task's Spec give alike (the API leaves defaults out of a task's Spec)."""
    cs = tmpl.get("ContainerSpec") or {}
    parts = [json.dumps(cs.get(k) or None, sort_keys=True) for k in _CONTAINER_KEYS]
    parts += [json.dumps(tmpl.get(k) or None, sort_keys=True) for k in ("Resources", "ForceUpdate", "Networks")]
    return tuple(parts)


def update_started(client: Client, name: str) -> str:
    """The service's UpdateStatus.StartedAt now ("" when it never had an update): the baseline a rollback's
    follower waits to see change."""
    svc = client.get(f"/services/{name}")
    return str((svc.get("UpdateStatus") or {}).get("StartedAt") or "")


def service_state(client: Client, name: str, baseline: str | None = None) -> Step:
    """Where a service is on its way to converging. With `baseline` (UpdateStatus.StartedAt before an update or
    rollback was asked for) it is not converged before the daemon has started that update."""
    found = client.get("/services", status="true", filters=filters(name=name))
    svc = next((s for s in found or [] if s["Spec"]["Name"] == name), None)
    if svc is None:  # an ID or the start of one, as docker takes it
        found = client.get("/services", status="true", filters=filters(id=name))
        svc = found[0] if found and len(found) == 1 else None
    if svc is None:
        return Step(name, 0, 0, "", finished=True, failed=f"service {name} not found")
    tasks = client.get("/tasks", filters=filters(service=svc["ID"])) or []
    want = template_key(svc["Spec"].get("TaskTemplate") or {})
    # A task restarting waits out its restart delay with desired state "ready": it counts as meant to run.
    live = [t for t in tasks if t.get("DesiredState") in ("running", "ready")]
    running = [t for t in live if t["Status"]["State"] == "running" and t.get("DesiredState") == "running"]
    current = [t for t in running if template_key(t.get("Spec") or {}) == want]
    desired = int((svc.get("ServiceStatus") or {}).get("DesiredTasks", len(live)))
    upd = svc.get("UpdateStatus") or {}
    ustate = upd.get("State") or ""
    pending_errs = sorted({t["Status"].get("Err") for t in live
                           if t["Status"]["State"] == "pending" and t["Status"].get("Err")})
    if ustate in ("paused", "rollback_paused"):
        return Step(name, len(current), desired, ustate, finished=True,
                    failed=f"update {ustate}: {upd.get('Message', '')}")
    if ustate == "updating":
        note = "updating"
    elif ustate == "rollback_started":
        note = "rolling back"
    elif pending_errs:
        note = "pending: " + "; ".join(pending_errs)
    else:
        note = f"{len(running)} running" + (f", {len(live) - len(running)} starting" if len(live) > len(running)
                                            else "")
    started = str(upd.get("StartedAt") or "")
    done = (ustate not in ("updating", "rollback_started") and len(current) == desired
            and len(running) == len(live) == desired and (baseline is None or started != baseline))
    if ustate in ("rollback_completed",) and done:
        note = "rolled back"
    return Step(name, len(current), desired, "converged" if done else note, finished=done)


def drain_state(client: Client, node: str) -> Step:
    """A drained node's tasks stopping (and their replacements starting elsewhere)."""
    n = client.get(f"/nodes/{node}")
    name = (n.get("Description") or {}).get("Hostname") or node
    tasks = client.get("/tasks", filters=filters(node=n["ID"])) or []
    left = [t for t in tasks if t.get("DesiredState") in ("running", "ready") or t["Status"]["State"] == "running"]
    total = max(len(left), 1)
    if left:
        return Step(name, 0, total, f"{len(left)} task(s) still on the node")
    if (n.get("Spec") or {}).get("Availability") != "drain":
        return Step(name, 0, 1, "", finished=True, failed=f"node {name} is no longer drained")
    return Step(name, 1, 1, "drained", finished=True)


@dataclass
class Outcome:
    steps: list[Step]
    timed_out: bool

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(s.finished and not s.failed for s in self.steps)


def follow(probes: list[Callable[[], Step]], console: Console, timeout: float | None, interval: float = 0.5,
           settle: int = 2) -> Outcome:
    """Poll each probe until all are finished (seen finished `settle` times in a row, so a task that dies right
    after it started is not taken for converged), one failed, or `timeout` seconds passed; draw a bar each."""
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), TextColumn("[dim]{task.fields[elapsed]}"),
                        console=console)
    started = time.monotonic()
    streak = [0] * len(probes)
    steps: list[Step] = [probe() for probe in probes]
    with progress:
        ids = [progress.add_task(s.name, total=max(s.total, 1), completed=s.done, note=s.note, elapsed="")
               for s in steps]
        while True:
            elapsed = f"{time.monotonic() - started:.0f}s"
            for i, s in enumerate(steps):
                progress.update(ids[i], total=max(s.total, 1), completed=s.done if s.total else 1, note=s.note,
                                elapsed=elapsed)
                streak[i] = streak[i] + 1 if s.finished else 0
            if any(s.failed for s in steps) or all(n >= settle for n in streak):
                return Outcome(steps, False)
            if deadline is not None and time.monotonic() > deadline:
                return Outcome(steps, True)
            time.sleep(interval)  # the poll interval of a client following the daemon's state
            steps = [probe() for probe in probes]
