"""A service's cron configuration, read from its labels.

swarm-cronjob's labels, as its users write them:

- `swarm.cronjob.enable` (a Go boolean) turns the schedule on;
- `swarm.cronjob.schedule` is the schedule (shoal.manager.cron.schedule);
- `swarm.cronjob.skip-running` (boolean): a tick while a run is still going is skipped;
- `swarm.cronjob.replicas`: how many tasks a run of a `replicated` service starts (default 1).

Shoal's own, for what swarm-cronjob does not do:

- `com.shoal.cron.timezone`: the IANA zone the schedule is read in (default UTC; `CRON_TZ=` in the schedule wins);
- `com.shoal.cron.concurrency`: `allow` (default), `forbid` (as skip-running) or `replace` (a new run stops the
  one still going);
- `com.shoal.cron.missed`: `run-once` (default) or `skip`, what a tick that passed while no manager led becomes;
- `com.shoal.cron.deadline`: a Go duration, how late after its tick a run may still start (default: no limit
  with `run-once`, 10s with `skip`);
- `com.shoal.cron.history` / `com.shoal.cron.failed-history`: how many finished runs (succeeded / failed) keep
  their tasks (default: unlimited, only the cluster's task history limit applies);
- `com.shoal.cron.trigger`: any new value starts a run now;
- `com.shoal.cron.on-update`: `keep` (default: a run in progress survives an update of its service) or `restart`
  (its tasks are stopped and start again from the new spec).

`com.shoal.cron.next-run` and `com.shoal.cron.last-run` are shown by the Engine API (read-only) and never stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shoal.api.messages import INVALID_ARGUMENT, rpc
from shoal.errors import InvalidArgument
from shoal.manager.cron.schedule import Schedule, ScheduleError, parse_duration, parse_schedule, zone
from shoal.model.objects import ServiceSpec

ENABLE = "swarm.cronjob.enable"
SCHEDULE = "swarm.cronjob.schedule"
SKIP_RUNNING = "swarm.cronjob.skip-running"
REPLICAS = "swarm.cronjob.replicas"
TIMEZONE = "com.shoal.cron.timezone"
CONCURRENCY = "com.shoal.cron.concurrency"
MISSED = "com.shoal.cron.missed"
DEADLINE = "com.shoal.cron.deadline"
HISTORY = "com.shoal.cron.history"
FAILED_HISTORY = "com.shoal.cron.failed-history"
TRIGGER = "com.shoal.cron.trigger"
ON_UPDATE = "com.shoal.cron.on-update"
NEXT_RUN = "com.shoal.cron.next-run"
LAST_RUN = "com.shoal.cron.last-run"
SHOWN_LABELS = (NEXT_RUN, LAST_RUN)  # written on the wire only

SKIP_DEADLINE = 10.0  # seconds: `missed=skip` still runs a tick this late (a leader election takes ~1.5 s)

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True, slots=True)
class CronConfig:
    schedule: Schedule
    key: str  # the schedule and zone as written: a change re-anchors the schedule
    replicas: int | None  # tasks per run of a replicated service; None: the job's own counts
    concurrency: str  # allow | forbid | replace
    missed: str  # run-once | skip
    deadline: float | None  # seconds; None: no limit
    history: int | None
    failed_history: int | None
    trigger: str
    restart_on_update: bool


def _invalid(label: str, value: str, why: str) -> InvalidArgument:
    return InvalidArgument(rpc(INVALID_ARGUMENT, f"invalid label {label}={value!r}: {why}"))


def _bool(labels: Mapping[str, str], key: str, default: bool) -> bool:
    v = labels.get(key)
    if v is None:
        return default
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise _invalid(key, v, "expected true or false")


def _count(labels: Mapping[str, str], key: str) -> int | None:
    v = labels.get(key)
    if v is None or v == "":
        return None
    if not v.strip().isdigit():
        raise _invalid(key, v, "expected a whole number")
    return int(v)


def _choice(labels: Mapping[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    v = labels.get(key, "") or default
    if v not in choices:
        raise _invalid(key, v, "expected one of " + ", ".join(choices))
    return v


def enabled(labels: Mapping[str, str]) -> bool:
    """Whether the labels turn a schedule on (a malformed switch counts as off; validation refuses it)."""
    return labels.get(ENABLE) in _TRUE


def cron_config(spec: ServiceSpec) -> CronConfig | None:
    """The service's cron configuration, None when it has none; InvalidArgument (400) for a bad label."""
    labels = spec.annotations.labels
    if not _bool(labels, ENABLE, False):
        return None
    text = labels.get(SCHEDULE, "").strip()
    if not text:
        raise _invalid(SCHEDULE, text, f"a schedule is required with {ENABLE}=true")
    tz = labels.get(TIMEZONE, "").strip()
    try:
        if tz:
            zone(tz)
    except ScheduleError as e:
        raise _invalid(TIMEZONE, tz, str(e)) from e
    try:
        schedule = parse_schedule(text, tz)
    except ScheduleError as e:
        raise _invalid(SCHEDULE, text, str(e)) from e
    replicas = _count(labels, REPLICAS)
    if spec.mode.kind == "replicated" and replicas is None:
        replicas = 1
    if spec.mode.kind != "replicated":
        replicas = None  # jobs run their own counts; global services run once per node
    skip = _bool(labels, SKIP_RUNNING, False)
    concurrency = _choice(labels, CONCURRENCY, ("allow", "forbid", "replace"), "forbid" if skip else "allow")
    missed = _choice(labels, MISSED, ("run-once", "skip"), "run-once")
    deadline: float | None = None
    raw = labels.get(DEADLINE, "").strip()
    if raw:
        try:
            deadline = parse_duration(raw)
        except ScheduleError as e:
            raise _invalid(DEADLINE, raw, str(e)) from e
        if deadline < 0:
            raise _invalid(DEADLINE, raw, "a deadline cannot be negative")
    elif missed == "skip":
        deadline = SKIP_DEADLINE
    on_update = _choice(labels, ON_UPDATE, ("keep", "restart"), "keep")
    return CronConfig(schedule=schedule, key=f"{text}|{tz}", replicas=replicas, concurrency=concurrency,
                      missed=missed, deadline=deadline, history=_count(labels, HISTORY),
                      failed_history=_count(labels, FAILED_HISTORY), trigger=labels.get(TRIGGER, ""),
                      restart_on_update=on_update == "restart")


def config_or_none(spec: ServiceSpec) -> CronConfig | None:
    """As cron_config, but None for labels the control API would have refused (data written before a check)."""
    try:
        return cron_config(spec)
    except InvalidArgument:
        return None


_CACHE: dict[tuple[str, tuple[tuple[str, str], ...]], CronConfig | None] = {}


def cron_config_cached(spec: ServiceSpec) -> CronConfig | None:
    """config_or_none, remembered per mode and labels (the orchestrators ask on every reconciliation)."""
    labels = spec.annotations.labels
    if ENABLE not in labels:
        return None
    key = (spec.mode.kind, tuple(sorted(labels.items())))
    if key not in _CACHE:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[key] = config_or_none(spec)
    return _CACHE[key]
