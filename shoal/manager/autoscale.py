"""Autoscaling: the leader sets a replicated service's replica count from what its tasks use.

A service opts in with labels (docker service create --label, or `deploy.labels` in a stack file):

- `com.shoal.autoscale.min`, `com.shoal.autoscale.max`: the bounds (min defaults to 1; max is required);
- `com.shoal.autoscale.cpu` and/or `com.shoal.autoscale.memory`: the target utilisation in percent of each
  task's reservation, or its limit when it reserves nothing (a metric without either is not used);
- `com.shoal.autoscale.up-window`, `com.shoal.autoscale.down-window`: stabilisation windows (`0s`, `5m`, ...;
  defaults 0 s up and 5 min down, as Kubernetes' HPA).

Every `PERIOD` seconds the leader applies the HPA rule to each metric: desired = ceil(current * observed /
target), unchanged within a 10 % tolerance; the largest of the metrics wins. A scale-down takes the highest
recommendation of the down window, a scale-up the lowest of the up window, so a brief spike or dip moves
nothing. The result is clamped to min..max. Observed use is the mean over the service's running tasks that the
agents measured (shoal.api.usage); a service with no measured task is left as it is. `current` is the spec's
replica count, so a manual `docker service scale` inside min..max stands until the next decision changes it;
one outside is clamped back with the reason.

Each change is a service update through the control API (so `docker events` shows `replicas.old/new`), carrying
its inputs in the label `com.shoal.autoscale.decision` (in the event's attributes as `autoscale.decision`, and in
`docker service inspect`). The recommendation history is the leader's memory: a new leader starts with an empty
window, which delays its first scale-down by one down window.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from shoal.api.usage import NodeUsage
from shoal.clock import Clock
from shoal.errors import ShoalError
from shoal.manager.controlapi import ControlAPI
from shoal.manager.stats import LeaderStats
from shoal.model.objects import Service, ServiceMode, Task
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore

log = logging.getLogger(__name__)

PREFIX = "com.shoal.autoscale."
LABEL_DECISION = PREFIX + "decision"
PERIOD = 15.0  # seconds between two evaluations (Kubernetes' HPA sync period)
TOLERANCE = 0.1
DEFAULT_UP_WINDOW = 0.0
DEFAULT_DOWN_WINDOW = 300.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class BadLabels(ValueError):
    """The service's autoscale labels cannot be used (said once in the log and in the decision label)."""


@dataclass(frozen=True)
class Policy:
    min: int
    max: int
    cpu: float | None  # target percent
    memory: float | None
    up_window: float
    down_window: float


def _duration(raw: str, what: str) -> float:
    m = _DURATION.match(raw.strip())
    if m is None:
        raise BadLabels(f"{PREFIX}{what}: {raw!r} is not a duration (e.g. 30s, 5m)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _percent(raw: str, what: str) -> float:
    try:
        v = float(raw.strip().removesuffix("%"))
    except ValueError:
        raise BadLabels(f"{PREFIX}{what}: {raw!r} is not a percentage") from None
    if not 0 < v <= 1000 or math.isnan(v):
        raise BadLabels(f"{PREFIX}{what}: {raw!r} is not between 0 and 1000 percent")
    return v


def _count(raw: str, what: str) -> int:
    try:
        v = int(raw.strip())
    except ValueError:
        raise BadLabels(f"{PREFIX}{what}: {raw!r} is not a whole number") from None
    if v < 0:
        raise BadLabels(f"{PREFIX}{what}: {raw!r} is negative")
    return v


def policy_of(svc: Service) -> Policy | None:
    """The service's autoscale policy; None when it has no autoscale label; BadLabels when they do not make one."""
    labels = svc.spec.annotations.labels
    if not any(k.startswith(PREFIX) and k != LABEL_DECISION for k in labels):
        return None
    if "max" not in {k.removeprefix(PREFIX) for k in labels}:
        raise BadLabels(f"{PREFIX}max is required")
    lo = _count(labels.get(PREFIX + "min", "1"), "min")
    hi = _count(labels[PREFIX + "max"], "max")
    if hi < lo:
        raise BadLabels(f"{PREFIX}max ({hi}) is below {PREFIX}min ({lo})")
    cpu = _percent(labels[PREFIX + "cpu"], "cpu") if PREFIX + "cpu" in labels else None
    mem = _percent(labels[PREFIX + "memory"], "memory") if PREFIX + "memory" in labels else None
    if cpu is None and mem is None:
        raise BadLabels(f"{PREFIX}cpu or {PREFIX}memory is required (a target in percent)")
    up = _duration(labels.get(PREFIX + "up-window", "0s"), "up-window")
    down = _duration(labels.get(PREFIX + "down-window", "5m"), "down-window")
    return Policy(lo, hi, cpu, mem, up, down)


def recommend(current: int, observed: float, target: float) -> int:
    """Kubernetes' HPA rule for one metric: ceil(current * observed / target), unchanged within the tolerance."""
    ratio = observed / target
    if abs(ratio - 1.0) <= TOLERANCE:
        return current
    return max(0, math.ceil(current * ratio - 1e-9))


def _reference(svc: Service) -> tuple[float | None, float | None]:
    """What 100 % means for one task: (cores, bytes), from its reservation, else its limit."""
    res = svc.spec.task_template.resources
    cpus: float | None = None
    mem: float | None = None
    for r in (res.reservations, res.limits) if res is not None else ():
        if r is None:
            continue
        if cpus is None and r.nano_cpus:
            cpus = r.nano_cpus / 1e9
        if mem is None and r.memory_bytes:
            mem = float(r.memory_bytes)
    return cpus, mem


@dataclass
class Decision:
    replicas: int
    reason: str
    clamped: bool = False  # a count set by hand outside min..max, put back inside (logged as a warning)


class Autoscaler:
    """The leader's loop; `usage()` gives each node's latest report (the dispatcher's `current_usage`)."""

    def __init__(self, store: MemoryStore, clock: Clock, control: ControlAPI,
                 usage: Callable[[], dict[str, tuple[NodeUsage, float]]], period: float = PERIOD,
                 stats: LeaderStats | None = None) -> None:
        self.stats = stats
        self.store = store
        self.clock = clock
        self.control = control
        self.usage = usage
        self.period = period
        self.history: dict[str, list[tuple[float, int]]] = {}  # service -> (time, recommendation)
        self._warned: dict[str, str] = {}

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.period)
            await self.tick()

    async def tick(self) -> None:
        used: dict[str, tuple[float | None, int | None]] = {}
        for report, _age in self.usage().values():
            for t in report.tasks:
                used[t.task_id] = (t.cpus, t.memory_bytes)
        view = self.store.view()
        seen: set[str] = set()
        for svc in view.services():
            seen.add(svc.id)
            d = self.decide(svc, view.tasks(service_id=svc.id), used)
            if d is None or d.replicas == svc.spec.mode.replicas:
                continue
            await self._apply(svc, d)
        for sid in [s for s in self.history if s not in seen]:
            del self.history[sid]

    def decide(self, svc: Service, tasks: list[Task], used: dict[str, tuple[float | None, int | None]]
               ) -> Decision | None:
        """The replica count `svc` should have now, with the inputs that made it; None to leave it."""
        if svc.spec.mode.kind != "replicated":
            return None
        try:
            pol = policy_of(svc)
        except BadLabels as e:
            if self._warned.get(svc.id) != str(e):
                self._warned[svc.id] = str(e)
                log.warning("service %s: autoscaling off: %s", svc.spec.annotations.name, e)
            return None
        if pol is None:
            return None
        self._warned.pop(svc.id, None)
        current = svc.spec.mode.replicas
        if not pol.min <= current <= pol.max:
            clamped = min(max(current, pol.min), pol.max)
            return Decision(clamped, f"replicas {current} outside {pol.min}..{pol.max}: clamped to {clamped}",
                            clamped=True)
        if svc.update_status is not None and svc.update_status.state in ("updating", "rollback_started"):
            return None  # its tasks are being replaced: their use says little
        running = [t for t in tasks if t.status.state == TaskState.RUNNING and t.desired_state == TaskState.RUNNING]
        ref_cpu, ref_mem = _reference(svc)
        recs: list[tuple[int, str]] = []
        for name, target, ref, idx in (("cpu", pol.cpu, ref_cpu, 0), ("memory", pol.memory, ref_mem, 1)):
            if target is None or ref is None:
                continue
            values = [100.0 * v / ref for t in running
                      if (u := used.get(t.id)) is not None and (v := u[idx]) is not None]
            if not values:
                continue
            observed = sum(values) / len(values)
            rec = recommend(current, observed, target)
            missing = len(running) - len(values)
            if missing and rec != current:
                # As the HPA: a task not measured yet (just started) counts as idle when scaling up and as on
                # target when scaling down, and the change stands only if it still points the same way.
                fill = 0.0 if rec > current else target
                again = recommend(current, (sum(values) + missing * fill) / len(running), target)
                rec = again if (again > current) == (rec > current) else current
            recs.append((rec, f"{name} {observed:.0f}% of a {target:g}% target over {len(values)} measured "
                              f"task{'s' if len(values) != 1 else ''}"))
        if not recs:
            return None
        rec, why = max(recs, key=lambda r: r[0])
        now = self.clock.now()
        hist = self.history.setdefault(svc.id, [])
        hist.append((now, rec))
        keep = max(pol.down_window, pol.up_window)
        hist[:] = [(at, r) for at, r in hist if now - at <= keep]
        if rec < current:
            rec = max(r for at, r in hist if now - at <= pol.down_window)
        elif rec > current:
            rec = min(r for at, r in hist if now - at <= pol.up_window)
        desired = min(max(rec, pol.min), pol.max)
        if desired == current:
            return None
        return Decision(desired, f"{why}: {current} -> {desired}")

    async def _apply(self, svc: Service, d: Decision) -> None:
        labels = {**svc.spec.annotations.labels, LABEL_DECISION: d.reason}
        spec = replace(svc.spec, mode=ServiceMode(kind="replicated", replicas=d.replicas),
                       annotations=replace(svc.spec.annotations, labels=labels))
        try:
            await self.control.update_service(svc.id, svc.meta.version, spec)
        except ShoalError as e:  # changed meanwhile (a user's update): decided again next period
            log.info("service %s: autoscale to %d not written: %s", svc.spec.annotations.name, d.replicas,
                     e.message)
            return
        if self.stats is not None:
            self.stats.autoscaled[(svc.id, "up" if d.replicas > svc.spec.mode.replicas else "down")] += 1
        log.log(logging.WARNING if d.clamped else logging.INFO, "service %s: autoscaled: %s",
                svc.spec.annotations.name, d.reason)
