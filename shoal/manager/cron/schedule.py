"""Cron schedules: parsing and the next tick after a moment, in a time zone.

The grammar is the one swarm-cronjob users write (robfig/cron with optional seconds):

- five fields `minute hour day-of-month month day-of-week`, or six with `second` first;
- each field `*` (or `?` in the day fields), a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from `a` to
  the field's end), or a comma-separated list of those; months and weekdays also by name (`JAN`, `mon`);
  weekday 0 and 7 are Sunday;
- descriptors `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`, and
  `@every <duration>` (Go's duration syntax, `90s`, `1h30m`; at least one second);
- an optional `CRON_TZ=<zone>` (or `TZ=<zone>`) prefix naming the IANA time zone the fields are read in.

When both day fields are restricted a day matches either of them (as cron does); otherwise both must match.
Times are wall-clock times of the zone: a time the zone skips (spring forward) does not occur, and a time it
repeats (fall back) ticks once, at its first occurrence. `@every` ticks are a fixed interval apart from the
previous tick and ignore the zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shoal.errors import InvalidArgument


class ScheduleError(InvalidArgument):
    """A schedule or duration that does not parse."""


_MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}

_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

# How far ahead a tick is looked for before the schedule counts as one that never fires (Feb 30th).
_HORIZON_YEARS = 8


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string (`10s`, `1h30m`, `1.5h`, `0`); ScheduleError when it is not one."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    neg = s.startswith("-")
    body = s.lstrip("+-")
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise ScheduleError(f"invalid duration {text!r}: expected a number and a unit (ns, us, ms, s, m, h)")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not body:
        raise ScheduleError(f"invalid duration {text!r}")
    return -total if neg else total


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (ScheduleError when this host's time zone data has no such zone)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ScheduleError(f"unknown time zone {name!r}") from e


@dataclass(frozen=True, slots=True)
class Every:
    """`@every <interval>`: ticks `interval` seconds apart."""

    interval: float
    text: str

    def next_after(self, t: float) -> float:
        return t + self.interval

    def latest_until(self, first: float, now: float) -> tuple[float, int]:
        """The newest tick in [first, now] given that `first` is one (first <= now), and how many ticks that is."""
        k = int((now - first) // self.interval)
        return first + k * self.interval, k + 1


@dataclass(frozen=True, slots=True)
class CronFields:
    """A five or six field cron expression, read in time zone `tz`."""

    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_any: bool  # the day-of-month field was * or ?
    weekdays_any: bool
    tz: ZoneInfo
    text: str

    def _day_matches(self, d: datetime) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.days_any or self.weekdays_any:
            return dom and dow
        return dom or dow

    def next_after(self, t: float) -> float:
        """The first tick strictly after epoch second `t`."""
        start = datetime.fromtimestamp(int(t) + 1, self.tz).replace(tzinfo=None, microsecond=0)
        d = start
        limit = start.replace(year=start.year + _HORIZON_YEARS) if not (start.month == 2 and start.day == 29) \
            else start.replace(year=start.year + _HORIZON_YEARS, day=28)
        while d < limit:
            if d.month not in self.months:
                d = (d.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(d):
                d = d.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                continue
            if d.hour not in self.hours:
                d = d.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if d.minute not in self.minutes:
                d = d.replace(second=0) + timedelta(minutes=1)
                continue
            if d.second not in self.seconds:
                d += timedelta(seconds=1)
                continue
            at = _epoch(d, self.tz)
            if at is not None and at > t:
                return at
            d += timedelta(seconds=1)  # skipped by the zone (spring forward), or the repeat of a fall-back hour
        raise ScheduleError(f"schedule {self.text!r} never fires")

    def latest_until(self, first: float, now: float) -> tuple[float, int]:
        latest, n = first, 1
        while True:
            nxt = self.next_after(latest)
            if nxt > now:
                return latest, n
            latest, n = nxt, n + 1


Schedule = Every | CronFields


def _epoch(naive: datetime, tz: ZoneInfo) -> float | None:
    """Epoch seconds of wall time `naive` in `tz` (its first occurrence), None when the zone skips it."""
    aware = naive.replace(tzinfo=tz, fold=0)
    back = aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if back != naive:
        return None
    return aware.timestamp()


def _value(tok: str, lo: int, hi: int, names: dict[str, int] | None, what: str) -> int:
    t = tok.strip().lower()
    if names is not None and t in names:
        return names[t]
    if not t.isdigit():
        raise ScheduleError(f"invalid {what} {tok!r}")
    v = int(t)
    if not lo <= v <= hi:
        raise ScheduleError(f"{what} {v} out of range {lo}-{hi}")
    return v


def _field(text: str, lo: int, hi: int, what: str, names: dict[str, int] | None = None,
           question: bool = False) -> tuple[frozenset[int], bool]:
    """The values field `text` allows, and whether it was `*` (or `?`)."""
    if text in ("*", "?") and (text == "*" or question):
        return frozenset(range(lo, hi + 1)), True
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"empty item in {what} field {text!r}")
        rng, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise ScheduleError(f"invalid step {step_s!r} in {what} field {text!r}")
            step = int(step_s)
        if rng == "*" or (rng == "?" and question):
            a, b = lo, hi
        elif "-" in rng:
            a_s, b_s = rng.split("-", 1)
            a, b = _value(a_s, lo, hi, names, what), _value(b_s, lo, hi, names, what)
            if a > b:
                raise ScheduleError(f"invalid range {rng!r} in {what} field: {a} is after {b}")
        else:
            a = _value(rng, lo, hi, names, what)
            b = hi if step_s else a
        out.update(range(a, b + 1, step))
    return frozenset(out), False


def parse_schedule(text: str, tz: str = "") -> Schedule:
    """Parse `text` (see the module docstring); `tz` is the zone when the text names none (default UTC)."""
    s = text.strip()
    m = re.match(r"^(?:CRON_TZ|TZ)=(\S+)\s+(.*)$", s)
    if m is not None:
        tz, s = m.group(1), m.group(2).strip()
    zi = zone(tz) if tz else ZoneInfo("UTC")
    if s.startswith("@every"):
        rest = s[len("@every"):].strip()
        if not rest:
            raise ScheduleError(f"invalid schedule {text!r}: @every needs a duration")
        seconds = parse_duration(rest)
        if seconds < 1:
            raise ScheduleError(f"invalid schedule {text!r}: @every needs an interval of at least 1s")
        return Every(interval=seconds, text=text)
    if s.startswith("@"):
        expanded = _DESCRIPTORS.get(s.lower())
        if expanded is None:
            raise ScheduleError(f"invalid schedule {text!r}: unknown descriptor {s!r}")
        s = expanded
    fields = s.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ScheduleError(f"invalid schedule {text!r}: expected 5 or 6 fields, found {len(fields)}")
    seconds_f, _ = _field(fields[0], 0, 59, "second")
    minutes, _ = _field(fields[1], 0, 59, "minute")
    hours, _ = _field(fields[2], 0, 23, "hour")
    days, days_any = _field(fields[3], 1, 31, "day of month", question=True)
    months, _ = _field(fields[4], 1, 12, "month", _MONTHS)
    weekdays, weekdays_any = _field(fields[5], 0, 7, "day of week", _DAYS, question=True)
    if 7 in weekdays:
        weekdays = (weekdays - {7}) | {0}
    cron = CronFields(seconds=seconds_f, minutes=minutes, hours=hours, days=days, months=months,
                      weekdays=weekdays, days_any=days_any, weekdays_any=weekdays_any, tz=zi, text=text)
    cron.next_after(datetime(2000, 1, 1, tzinfo=UTC).timestamp())  # Feb 30th and the like: refused now
    return cron
